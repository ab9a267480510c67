"""``python -m bench.cuda_paths LIBDIR``: shell ``export`` lines that let FlashRNN build its CUDA extensions where
the CUDA toolkit holds nvcc but not the libraries' headers (``cublas_v2.h``, ``cusparse.h``, ... which torch's own
headers include too), and the libraries come from pip's ``nvidia`` packages beside torch, with versioned file names
only (``libcublas.so.13``: the linker's ``-lcublas`` wants ``libcublas.so``).

Prints nothing but a comment where the toolkit has ``cublas_v2.h``. Otherwise: ``FLASHRNN_EXTRA_INCLUDE_PATHS``
(FlashRNN passes each as ``-isystem`` to the host compiler and nvcc) = every ``include`` folder of those packages,
and ``LIBRARY_PATH`` = LIBDIR, where an unversioned link is made to each library FlashRNN links (cuBLAS), then the
packages' library folders. gpu_check.sh evaluates the output before phase 1. Seen on this project's CPU machine:
``/usr/local/cuda-13.0/include`` without ``cublas_v2.h``; not yet seen on the GPU image.
"""

import glob
import site
import sys
from pathlib import Path

LINKED = ("cublas",)  # FlashRNN's builds pass -lcublas


def cuda_home() -> str | None:
    from torch.utils import cpp_extension

    return cpp_extension.CUDA_HOME


def nvidia_roots(site_dirs=None) -> list[Path]:
    """The ``nvidia`` package folders of every site-packages folder."""
    dirs = site_dirs if site_dirs is not None else [*site.getsitepackages(), site.getusersitepackages()]
    return [Path(d) / "nvidia" for d in dirs if (Path(d) / "nvidia").is_dir()]


def exports(lib_dir: Path, home: str | None, roots: list[Path]) -> list[str]:
    """The shell lines (see the module's docstring); creates the links in ``lib_dir``."""
    if home and (Path(home) / "include" / "cublas_v2.h").exists():
        return [f"# {home}/include has cublas_v2.h: nothing to add"]
    includes = sorted(
        {str(Path(p).parent) for root in roots for p in glob.glob(f"{root}/**/include/*.h", recursive=True)}
    )
    if not any((Path(d) / "cublas_v2.h").exists() for d in includes):
        return [f"# no cublas_v2.h in {home or 'CUDA_HOME (unset)'}/include nor in {[str(r) for r in roots]}"]
    lib_dirs = []
    lib_dir.mkdir(parents=True, exist_ok=True)
    for name in LINKED:
        files = sorted((f for root in roots for f in glob.glob(f"{root}/**/lib{name}.so*", recursive=True)), key=len)
        if not files:
            continue
        lib_dirs += [str(Path(f).parent) for f in files]
        link = lib_dir / f"lib{name}.so"
        if not any(Path(f).name == f"lib{name}.so" for f in files) and not link.exists():
            link.symlink_to(files[0])
    library_path = ":".join(dict.fromkeys([str(lib_dir), *lib_dirs]))
    return [
        f"export FLASHRNN_EXTRA_INCLUDE_PATHS='{':'.join(includes)}'",
        f"export LIBRARY_PATH='{library_path}'${{LIBRARY_PATH:+:$LIBRARY_PATH}}",
    ]


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m bench.cuda_paths LIBDIR", file=sys.stderr)
        return 2
    print("\n".join(exports(Path(args[0]), cuda_home(), nvidia_roots())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
