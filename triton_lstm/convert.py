"""Swap ``torch.nn.LSTM`` for ``triton_lstm.LSTM`` throughout a model, and back, keeping the Parameter objects.

The new module takes over the old one's Parameters themselves (not copies), so their values, device, dtype and
``requires_grad``, an optimizer that already holds them, and its state all carry over unchanged.
"""

import warnings
from collections.abc import Callable

from torch import nn
from torch.nn.utils import parametrize

from triton_lstm.module import LSTM, meta_twin


def convert(model: nn.Module, *, kernel: str = "auto") -> nn.Module:
    """Replace every ``torch.nn.LSTM`` in ``model`` (the root included) by a ``triton_lstm.LSTM`` that holds the
    same Parameters, in place, and return the model (the new module when the root itself was converted).

    Only modules whose type is exactly ``torch.nn.LSTM`` are replaced: a subclass may change what forward does, or
    add methods its users call. Subclasses are left as they are, with a warning naming them; ``triton_lstm.patch()``
    runs them on the Triton kernels. ``kernel`` is passed to every new module.
    """
    kinds = {_kind(module) for module in model.modules()}
    subclasses = sorted(
        f"{k.__module__}.{k.__qualname__}" for k in kinds if issubclass(k, nn.LSTM) and k is not nn.LSTM
    )
    if subclasses:
        warnings.warn(
            f"convert left {', '.join(subclasses)} unconverted: subclasses of torch.nn.LSTM keep their own class "
            "(their forward and methods). triton_lstm.patch() runs them on the Triton kernels.",
            stacklevel=2,
        )
    return _swap(model, nn.LSTM, lambda old: _rebuild(old, LSTM, kernel=kernel))


def unconvert(model: nn.Module) -> nn.Module:
    """The inverse of ``convert``: every ``triton_lstm.LSTM`` becomes a ``torch.nn.LSTM`` with the same Parameters."""
    return _swap(model, LSTM, lambda old: _rebuild(old, nn.LSTM))


def _swap(model: nn.Module, source: type, build: Callable[[nn.Module], nn.Module]) -> nn.Module:
    """Replace each module of exactly type ``source`` by ``build(module)``; a module that appears more than once
    in the tree (shared) becomes one new module, shared the same way."""
    built = {}

    def replacement(module):
        if id(module) not in built:
            built[id(module)] = build(module)
        return built[id(module)]

    if _kind(model) is source:
        return replacement(model)
    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):
            if _kind(child) is source:
                parent._modules[name] = replacement(child)
    return model


def _kind(module: nn.Module) -> type:
    """The module's class; for a parametrized module, the class it had before (parametrize subclasses it)."""
    return type(module).__bases__[0] if parametrize.is_parametrized(module) else type(module)


def _rebuild(old: nn.Module, cls: type, **extra) -> nn.Module:
    """A ``cls`` with ``old``'s configuration and training mode that holds ``old``'s Parameter objects."""
    if parametrize.is_parametrized(old):
        raise ValueError(
            f"cannot convert a {type(old).__name__} with parametrized weights; remove the parametrizations first "
            "(torch.nn.utils.parametrize.remove_parametrizations)"
        )
    new = meta_twin(cls, old, **extra)
    for name in old._flat_weights_names:
        setattr(new, name, getattr(old, name))
    if isinstance(new, nn.LSTM) and new.weight_ih_l0.is_cuda:
        # cuDNN wants its weights in one buffer; this moves their data, not the Parameter objects.
        new.flatten_parameters()
    return new.train(old.training)
