"""triton_lstm.LSTM's API against torch.nn.LSTM: constructor, parameters, serialisation and forward checks.

Every expected error, warning and repr is what torch.nn.LSTM itself produces in the same test, so these tests
check identity with the installed torch rather than a copy of its messages. Numerical agreement of the
kernels is the conformance matrix's job; forward results here are a few smoke checks.
"""

import copy
import io
import pickle
import re
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import triton_lstm
from triton_lstm import functional
from triton_lstm.module import LSTM

# torch warns once per process that oneDNN cannot run projections; which test sees it depends on the order.
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")

# Small sizes: input (IN) 3, hidden 5, projection 2, 4 steps, batch 2.
IN, H, P, T, B = 3, 5, 2, 4, 2


def build_pair(*args, **kwargs):
    """(ours, torch's) built from the same arguments after the same seed."""
    torch.manual_seed(0)
    theirs = nn.LSTM(*args, **kwargs)
    torch.manual_seed(0)
    ours = LSTM(*args, **kwargs)
    return ours, theirs


def raised_by(fn):
    """The exception ``fn()`` raises; fails the test if it raises none."""
    try:
        fn()
    except Exception as error:
        return error
    pytest.fail("torch.nn.LSTM raised no error for this case")


def exactly(message):
    return "^" + re.escape(message) + "$"


def assert_same_error(ours_fn, theirs_fn):
    """``ours_fn`` raises the exception type and message that ``theirs_fn`` (torch) raises."""
    expected = raised_by(theirs_fn)
    with pytest.raises(type(expected), match=exactly(str(expected))) as info:
        ours_fn()
    assert type(info.value) is type(expected)


def recorded_warnings(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return caught


def assert_close(ours, theirs, tol=1e-5):
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    torch.testing.assert_close(ours, theirs, atol=tol, rtol=tol)


def assert_same_parameters(ours, theirs):
    """Same names, order, shapes, dtypes, devices and values."""
    ours_params, theirs_params = list(ours.named_parameters()), list(theirs.named_parameters())
    assert [name for name, _ in ours_params] == [name for name, _ in theirs_params]
    for (name, a), (_, b) in zip(ours_params, theirs_params, strict=True):
        assert (a.shape, a.dtype, a.device) == (b.shape, b.dtype, b.device), name
        if a.device.type != "meta":
            assert torch.equal(a, b), name


def assert_flat_weights_current(module):
    """``_flat_weights`` holds exactly the module's current weights, in ``_flat_weights_names`` order."""
    assert len(module._flat_weights) == len(module._flat_weights_names)
    for name, weight in zip(module._flat_weights_names, module._flat_weights, strict=True):
        assert weight is getattr(module, name), name


@pytest.fixture
def default_float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


# ---------------------------------------------------------------------------------------------------------------
# Constructor

CONFIGS = [
    pytest.param((IN, H), {}, id="default"),
    pytest.param((IN, H, 2), {}, id="layers2-positional"),
    pytest.param((IN, H), {"num_layers": 2, "bias": False}, id="layers2-nobias"),
    pytest.param((IN, H), {"proj_size": P, "num_layers": 2}, id="proj-layers2"),
    pytest.param((IN, H), {"batch_first": True, "bidirectional": True}, id="batchfirst-bidir"),
    pytest.param((IN, H), {"num_layers": 2, "dropout": 1}, id="dropout-int1"),
    pytest.param((IN, H), {"num_layers": 3, "dropout": 0.5, "proj_size": 4}, id="dropout-proj"),
    pytest.param((IN, H), {"bidirectional": 1}, id="bidir-int1"),
    pytest.param((IN, H), {"bidirectional": "yes"}, id="bidir-str"),
    pytest.param((True, H), {}, id="input-size-bool"),
    pytest.param(
        (IN, H, 2, False, True, 0.5, True, P),
        {"dtype": torch.float64},
        id="all-positional-float64",
    ),
]


@pytest.mark.parametrize(("args", "kwargs"), CONFIGS)
def test_constructor_matches_torch(args, kwargs):
    ours, theirs = build_pair(*args, **kwargs)
    for name in [*nn.LSTM.__constants__, "training"]:
        assert getattr(ours, name) == getattr(theirs, name), name
        assert type(getattr(ours, name)) is type(getattr(theirs, name)), name
    assert ours.kernel == "auto"
    assert repr(ours) == repr(theirs)
    assert ours._flat_weights_names == theirs._flat_weights_names
    assert ours._all_weights == theirs._all_weights
    assert_same_parameters(ours, theirs)
    assert list(ours.buffers()) == [] and list(ours.children()) == []
    assert_flat_weights_current(ours)


def test_constants_match_torch():
    assert LSTM.__constants__ == nn.LSTM.__constants__


def test_construction_consumes_rng_like_torch():
    build_pair(IN, H, num_layers=2, proj_size=P, bidirectional=True)
    after_ours = torch.rand(3)
    torch.manual_seed(0)
    nn.LSTM(IN, H, num_layers=2, proj_size=P, bidirectional=True)
    assert torch.equal(after_ours, torch.rand(3))


CONSTRUCTOR_ERRORS = [
    pytest.param((), {}, id="missing-both-sizes"),
    pytest.param((IN,), {}, id="missing-hidden-size"),
    pytest.param((IN, H), {"foo": 1}, id="unexpected-kwarg"),
    pytest.param((IN, H), {"nonlinearity": "tanh"}, id="nonlinearity-kwarg"),
    pytest.param((IN, H), {"mode": "GRU"}, id="mode-kwarg"),
    pytest.param((IN, H), {"input_size": IN}, id="input-size-twice"),
    pytest.param((IN, H, 1, True, False, 0.0, False, 0, None, None, 0), {}, id="too-many-positional"),
    pytest.param((IN, H), {"dropout": -0.1}, id="dropout-negative"),
    pytest.param((IN, H), {"dropout": 1.5}, id="dropout-above-1"),
    pytest.param((IN, H), {"dropout": True}, id="dropout-true"),
    pytest.param((IN, H), {"dropout": False}, id="dropout-false"),
    pytest.param((IN, H), {"dropout": "0.1"}, id="dropout-str"),
    pytest.param((IN, H), {"dropout": None}, id="dropout-none"),
    pytest.param((IN, H), {"bias": 0}, id="bias-int0"),
    pytest.param((IN, H), {"bias": 1}, id="bias-int1"),
    pytest.param((IN, H), {"bias": "True"}, id="bias-str"),
    pytest.param((IN, H), {"batch_first": 0}, id="batchfirst-int0"),
    pytest.param((IN, H), {"batch_first": 1}, id="batchfirst-int1"),
    pytest.param((IN, H), {"batch_first": "False"}, id="batchfirst-str"),
    pytest.param((3.0, H), {}, id="input-size-float"),
    pytest.param(("10", H), {}, id="input-size-str"),
    pytest.param((np.int64(IN), H), {}, id="input-size-numpy-int"),
    pytest.param((0, H), {}, id="input-size-0"),
    pytest.param((-1, H), {}, id="input-size-negative"),
    pytest.param((IN, 5.0), {}, id="hidden-size-float"),
    pytest.param((IN, np.float32(5)), {}, id="hidden-size-numpy-float"),
    pytest.param((IN, 0), {}, id="hidden-size-0"),
    pytest.param((IN, -2), {}, id="hidden-size-negative"),
    pytest.param((IN, H), {"num_layers": 0}, id="layers-0"),
    pytest.param((IN, H), {"num_layers": -1}, id="layers-negative"),
    pytest.param((IN, H), {"num_layers": 2.0}, id="layers-float"),
    pytest.param((IN, H), {"num_layers": "2"}, id="layers-str"),
    pytest.param((IN, H), {"proj_size": -1}, id="proj-negative"),
    pytest.param((IN, H), {"proj_size": H}, id="proj-equal-hidden"),
    pytest.param((IN, H), {"proj_size": H + 1}, id="proj-above-hidden"),
    pytest.param((IN, H), {"proj_size": 2.0}, id="proj-float"),
    pytest.param((IN, H), {"proj_size": "2"}, id="proj-str"),
    pytest.param((IN, H), {"dtype": torch.int64}, id="dtype-int64"),
    # Several errors at once: the first one torch checks wins.
    pytest.param((0, 0), {"bias": 0, "batch_first": 0, "dropout": 2}, id="order-dropout-first"),
    pytest.param((0, 0), {"bias": 0, "batch_first": 0}, id="order-bias-before-batchfirst"),
    pytest.param((0, 0), {"batch_first": 0}, id="order-batchfirst-before-sizes"),
    pytest.param((0, 0.5), {"num_layers": 0}, id="order-input-before-hidden"),
    pytest.param((IN, H), {"num_layers": 0, "proj_size": -1}, id="order-layers-before-proj"),
]


@pytest.mark.parametrize(("args", "kwargs"), CONSTRUCTOR_ERRORS)
def test_constructor_error_matches_torch(args, kwargs):
    assert_same_error(lambda: LSTM(*args, **kwargs), lambda: nn.LSTM(*args, **kwargs))


@pytest.mark.parametrize(
    ("dropout", "num_layers"),
    [pytest.param(0.5, 1, id="p0.5"), pytest.param(1, 1, id="p1-int"), pytest.param(0.5, 2, id="two-layers")],
)
def test_dropout_warning_matches_torch(dropout, num_layers):
    ours = recorded_warnings(lambda: LSTM(IN, H, num_layers, dropout=dropout))
    theirs = recorded_warnings(lambda: nn.LSTM(IN, H, num_layers, dropout=dropout))
    assert [(w.category, str(w.message)) for w in ours] == [(w.category, str(w.message)) for w in theirs]
    # Ours points at the line that built the module.
    assert all(w.filename == __file__ for w in ours)


REPRS = [
    pytest.param((10, 20), {}, id="default"),
    pytest.param((10, 20), {"num_layers": 2}, id="layers2"),
    pytest.param(
        (10, 20),
        {"proj_size": 7, "num_layers": 2, "bias": False, "batch_first": True, "dropout": 0.5, "bidirectional": True},
        id="everything",
    ),
    pytest.param((10, 20), {"num_layers": 2, "dropout": 1}, id="dropout-int"),
]


@pytest.mark.parametrize(("args", "kwargs"), REPRS)
def test_repr_matches_torch(args, kwargs):
    assert repr(LSTM(*args, **kwargs)) == repr(nn.LSTM(*args, **kwargs))


# ---------------------------------------------------------------------------------------------------------------
# The kernel keyword


@pytest.mark.parametrize("kernel", functional.KERNELS)
def test_kernel_is_stored(kernel):
    assert LSTM(IN, H, kernel=kernel).kernel == kernel


def test_kernel_shows_in_repr_unless_auto():
    assert repr(LSTM(IN, H, kernel="auto")) == "LSTM(3, 5)"
    assert repr(LSTM(IN, H, num_layers=2, kernel="step")) == "LSTM(3, 5, num_layers=2, kernel='step')"


@pytest.mark.parametrize("kernel", ["cudnn", None, "STEP"], ids=["unknown-name", "none", "wrong-case"])
def test_unknown_kernel_is_rejected(kernel):
    choices = ", ".join(repr(name) for name in functional.KERNELS)
    with pytest.raises(ValueError, match=exactly(f"kernel must be one of {choices}; got {kernel!r}")):
        LSTM(IN, H, kernel=kernel)


def test_kernel_is_keyword_only():
    assert_same_error(
        lambda: LSTM(IN, H, 1, True, False, 0.0, False, 0, None, None, "step"),
        lambda: nn.LSTM(IN, H, 1, True, False, 0.0, False, 0, None, None, "step"),
    )


def test_unknown_kernel_set_later_is_rejected_at_forward():
    module = LSTM(IN, H)
    module.kernel = "nope"
    with pytest.raises(ValueError, match="kernel must be one of"):
        module(torch.randn(T, B, IN))


# ---------------------------------------------------------------------------------------------------------------
# Parameters


def test_parameter_shapes_match_torch_with_every_option():
    ours, theirs = build_pair(IN, H, num_layers=3, bidirectional=True, proj_size=P, bias=False)
    assert_same_parameters(ours, theirs)
    assert not hasattr(ours, "bias_ih_l0") and not hasattr(ours, "bias_hh_l1_reverse")


def test_all_weights_are_the_parameters():
    ours, theirs = build_pair(IN, H, num_layers=2, bidirectional=True, proj_size=P)
    assert [[tuple(w.shape) for w in group] for group in ours.all_weights] == [
        [tuple(w.shape) for w in group] for group in theirs.all_weights
    ]
    for names, group in zip(ours._all_weights, ours.all_weights, strict=True):
        assert all(weight is getattr(ours, name) for name, weight in zip(names, group, strict=True))
    assert_flat_weights_current(ours)


def test_reset_parameters_is_bit_identical_and_in_place():
    ours, theirs = build_pair(IN, H, num_layers=2, bidirectional=True, proj_size=P)
    before = list(ours.parameters())
    torch.manual_seed(7)
    ours.reset_parameters()
    torch.manual_seed(7)
    theirs.reset_parameters()
    assert_same_parameters(ours, theirs)
    assert all(a is b for a, b in zip(before, ours.parameters(), strict=True))
    assert_flat_weights_current(ours)


def test_flatten_parameters_is_a_no_op():
    ours = LSTM(IN, H)
    state = {k: v.clone() for k, v in ours.state_dict().items()}
    assert ours.flatten_parameters() is None
    assert all(torch.equal(v, ours.state_dict()[k]) for k, v in state.items())
    assert_flat_weights_current(ours)


def test_assigning_a_parameter_updates_flat_weights():
    ours, theirs = build_pair(IN, H)
    replacement = torch.randn(4 * H, H)
    ours.weight_hh_l0 = nn.Parameter(replacement.clone())
    theirs.weight_hh_l0 = nn.Parameter(replacement.clone())
    assert_flat_weights_current(ours)
    x = torch.randn(T, B, IN)
    assert_close(ours(x)[0], theirs(x)[0])


def test_assigning_a_plain_tensor_is_rejected_and_changes_nothing():
    ours, theirs = build_pair(IN, H)
    assert_same_error(
        lambda: setattr(ours, "weight_ih_l0", torch.randn(4 * H, IN)),
        lambda: setattr(theirs, "weight_ih_l0", torch.randn(4 * H, IN)),
    )
    assert_flat_weights_current(ours)


def test_bias_set_to_none_leaves_parameters_and_fails_forward_like_torch():
    ours, theirs = build_pair(IN, H)
    ours.bias_ih_l0 = None
    theirs.bias_ih_l0 = None
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    x = torch.randn(T, B, IN)
    assert_same_error(lambda: ours(x), lambda: theirs(x))


def test_deleted_then_reassigned_weight_is_used():
    ours, theirs = build_pair(IN, H)
    replacement = torch.randn(4 * H, H)
    for module in (ours, theirs):
        del module.weight_hh_l0
        assert not hasattr(module, "weight_hh_l0")
        module.to("cpu")
        module.weight_hh_l0 = nn.Parameter(replacement.clone())
    assert_flat_weights_current(ours)
    x = torch.randn(T, B, IN)
    assert_close(ours(x)[0], theirs(x)[0])


def test_tied_weights():
    ours, theirs = build_pair(IN, H, bidirectional=True)
    for module in (ours, theirs):
        module.weight_hh_l0_reverse = module.weight_hh_l0
    assert len(list(ours.parameters())) == len(list(theirs.parameters()))
    x = torch.randn(T, B, IN)
    assert_close(ours(x)[0], theirs(x)[0])


def test_weight_norm_keeps_output_and_can_be_removed():
    from torch.nn.utils import parametrizations, parametrize

    module = LSTM(IN, H)
    x = torch.randn(T, B, IN)
    expected = module(x)[0].detach()
    parametrizations.weight_norm(module, "weight_hh_l0")
    assert_close(module(x)[0].detach(), expected)
    parametrize.remove_parametrizations(module, "weight_hh_l0")
    assert isinstance(module.weight_hh_l0, nn.Parameter)
    assert_close(module(x)[0].detach(), expected)
    assert_flat_weights_current(module)


@pytest.mark.parametrize(
    "convert",
    [
        pytest.param(lambda m: m.double(), id="double"),
        pytest.param(lambda m: m.to(torch.float64), id="to-float64"),
        pytest.param(lambda m: m.half(), id="half"),
        pytest.param(lambda m: m.to(dtype=torch.bfloat16), id="to-bfloat16"),
    ],
)
def test_dtype_conversion_rebinds_flat_weights(convert):
    ours, theirs = build_pair(IN, H, num_layers=2, proj_size=P)
    assert convert(ours) is ours
    convert(theirs)
    assert_same_parameters(ours, theirs)
    assert_flat_weights_current(ours)


def test_double_module_runs_in_float64():
    ours, theirs = build_pair(IN, H, num_layers=2, bidirectional=True)
    ours.double()
    theirs.double()
    x = torch.randn(T, B, IN, dtype=torch.float64)
    output, (h_n, c_n) = ours(x)
    expected, (h_expected, c_expected) = theirs(x)
    assert output.dtype == h_n.dtype == c_n.dtype == torch.float64
    assert_close(output, expected)
    assert_close(h_n, h_expected)
    assert_close(c_n, c_expected)


def test_factory_kwargs():
    ours, theirs = build_pair(IN, H, proj_size=P, device="cpu", dtype=torch.float64)
    assert all(p.dtype == torch.float64 and p.device.type == "cpu" for p in ours.parameters())
    assert_same_parameters(ours, theirs)


def test_default_dtype_is_followed(default_float64):
    ours, theirs = build_pair(IN, H)
    assert all(p.dtype == torch.float64 for p in ours.parameters())
    assert_same_parameters(ours, theirs)


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda cls: cls(IN, H, num_layers=2, proj_size=P, device="meta"), id="device-kwarg"),
        pytest.param(lambda cls: _in_meta_context(cls), id="device-context"),
    ],
)
def test_meta_construction_then_to_empty_and_reset(build):
    torch.manual_seed(0)
    ours = build(LSTM)
    after_ours = torch.rand(1)
    torch.manual_seed(0)
    theirs = build(nn.LSTM)
    assert torch.equal(after_ours, torch.rand(1))
    assert_same_parameters(ours, theirs)
    assert all(p.device.type == "meta" for p in ours.parameters())

    ours.to_empty(device="cpu")
    theirs.to_empty(device="cpu")
    assert_flat_weights_current(ours)
    torch.manual_seed(3)
    ours.reset_parameters()
    torch.manual_seed(3)
    theirs.reset_parameters()
    assert_same_parameters(ours, theirs)


def _in_meta_context(cls):
    with torch.device("meta"):
        return cls(IN, H, num_layers=2, proj_size=P)


def test_replicas_for_data_parallel_get_their_own_lists():
    module = LSTM(IN, H)
    replica = module._replicate_for_data_parallel()
    assert replica._flat_weights == module._flat_weights
    assert replica._flat_weights is not module._flat_weights
    assert replica._flat_weights_names is not module._flat_weights_names


# ---------------------------------------------------------------------------------------------------------------
# State dicts, copies and serialisation


def test_state_dict_loads_both_ways():
    ours, theirs = build_pair(IN, H, num_layers=2, bidirectional=True, proj_size=P)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    torch.manual_seed(1)
    other = nn.LSTM(IN, H, num_layers=2, bidirectional=True, proj_size=P)
    ours.load_state_dict(other.state_dict())
    assert_same_parameters(ours, other)
    assert_flat_weights_current(ours)

    torch.manual_seed(2)
    other_ours = LSTM(IN, H, num_layers=2, bidirectional=True, proj_size=P)
    theirs.load_state_dict(other_ours.state_dict())
    assert_same_parameters(other_ours, theirs)


def test_state_dict_load_with_assign_updates_flat_weights():
    ours, theirs = build_pair(IN, H, num_layers=2)
    ours.load_state_dict(theirs.state_dict(), assign=True)
    assert_flat_weights_current(ours)
    assert ours.weight_ih_l1.data_ptr() == theirs.weight_ih_l1.data_ptr()


def _pickled(module):
    return pickle.loads(pickle.dumps(module))


def _saved(module):
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize(
    "round_trip",
    [
        pytest.param(copy.deepcopy, id="deepcopy"),
        pytest.param(_pickled, id="pickle"),
        pytest.param(_saved, id="torch-save-load"),
    ],
)
def test_round_trip(round_trip):
    module = LSTM(IN, H, num_layers=2, bidirectional=True, proj_size=P, batch_first=True, kernel="step")
    module.eval()
    copied = round_trip(module)
    assert type(copied) is LSTM and copied is not module
    assert repr(copied) == repr(module) and copied.training is False
    assert_same_parameters(copied, module)
    assert_flat_weights_current(copied)
    assert all(a is not b for a, b in zip(copied.parameters(), module.parameters(), strict=True))
    assert copied.kernel == "step"
    # "auto" runs anywhere: on a GPU machine these CPU tensors run without the interpreter, where "step" cannot.
    copied.kernel = module.kernel = "auto"
    x = torch.randn(B, T, IN)
    assert torch.equal(copied(x)[0], module(x)[0])


def test_functional_call_uses_the_given_weights_then_its_own():
    ours, _ = build_pair(IN, H, num_layers=2)
    torch.manual_seed(5)
    other = nn.LSTM(IN, H, num_layers=2)
    x = torch.randn(T, B, IN)
    own = ours(x)[0]
    swapped = torch.func.functional_call(ours, dict(other.named_parameters()), (x,))[0]
    assert_close(swapped, other(x)[0])
    assert torch.equal(ours(x)[0], own)
    assert_flat_weights_current(ours)


# ---------------------------------------------------------------------------------------------------------------
# from_torch / to_torch

COPY_CONFIGS = [
    pytest.param({}, id="default"),
    pytest.param({"num_layers": 2, "bidirectional": True, "proj_size": P, "batch_first": True}, id="everything"),
    pytest.param({"bias": False, "dropout": 0.5}, id="nobias-dropout-one-layer"),
    pytest.param({"num_layers": 2, "dtype": torch.float64}, id="float64"),
]


def _config(module):
    return {name: getattr(module, name) for name in [*nn.LSTM.__constants__, "training"]}


@pytest.mark.parametrize("kwargs", COPY_CONFIGS)
def test_from_torch_copies_configuration_and_weights(kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = nn.LSTM(IN, H, **kwargs)
    theirs.weight_hh_l0.requires_grad_(False)
    theirs.eval()
    state = torch.random.get_rng_state()
    caught = recorded_warnings(lambda: LSTM.from_torch(theirs, kernel="step"))
    assert caught == []
    assert torch.equal(state, torch.random.get_rng_state())
    ours = LSTM.from_torch(theirs, kernel="step")
    assert type(ours) is LSTM and ours.kernel == "step"
    assert _config(ours) == _config(theirs)
    assert_same_parameters(ours, theirs)
    assert [p.requires_grad for p in ours.parameters()] == [p.requires_grad for p in theirs.parameters()]
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(ours.parameters(), theirs.parameters(), strict=True))
    assert_flat_weights_current(ours)


@pytest.mark.parametrize("kwargs", COPY_CONFIGS)
def test_to_torch_copies_configuration_and_weights(kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = LSTM(IN, H, **kwargs)
    list(ours.parameters())[-1].requires_grad_(False)
    ours.eval()
    assert recorded_warnings(ours.to_torch) == []
    theirs = ours.to_torch()
    assert type(theirs) is nn.LSTM
    assert _config(theirs) == _config(ours)
    assert_same_parameters(ours, theirs)
    assert [p.requires_grad for p in ours.parameters()] == [p.requires_grad for p in theirs.parameters()]
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(ours.parameters(), theirs.parameters(), strict=True))


def test_from_torch_then_to_torch_gives_the_same_outputs():
    torch.manual_seed(0)
    theirs = nn.LSTM(IN, H, num_layers=2, proj_size=P, batch_first=True)
    ours = LSTM.from_torch(theirs)
    back = ours.to_torch()
    x = torch.randn(B, T, IN)
    expected = theirs(x)
    for module in (ours, back):
        output, (h_n, c_n) = module(x)
        assert_close(output, expected[0])
        assert_close(h_n, expected[1][0])
        assert_close(c_n, expected[1][1])


def test_from_torch_rejects_other_modules():
    with pytest.raises(TypeError, match=exactly("from_torch expects a torch.nn.LSTM, got GRU")):
        LSTM.from_torch(nn.GRU(IN, H))


# ---------------------------------------------------------------------------------------------------------------
# forward: results (smoke checks; the conformance matrix covers the numbers)

FORWARD_CASES = [
    pytest.param({}, False, False, id="batched-default"),
    pytest.param({"num_layers": 2, "bidirectional": True, "proj_size": P}, True, False, id="batched-bidir-proj-hx"),
    pytest.param({"batch_first": True, "bias": False}, True, False, id="batchfirst-hx"),
    pytest.param({"num_layers": 2, "proj_size": P}, True, True, id="unbatched-proj-hx"),
    pytest.param({"batch_first": True, "bidirectional": True}, False, True, id="unbatched-batchfirst"),
]


def _random_input(module, unbatched, batch=B):
    if unbatched:
        return torch.randn(T, module.input_size)
    return torch.randn(batch, T, module.input_size) if module.batch_first else torch.randn(T, batch, module.input_size)


def _random_hx(module, unbatched, batch=B):
    rows = module.num_layers * (2 if module.bidirectional else 1)
    batch_dims = () if unbatched else (batch,)
    return (
        torch.randn(rows, *batch_dims, module.proj_size or module.hidden_size),
        torch.randn(rows, *batch_dims, module.hidden_size),
    )


@pytest.mark.parametrize(("kwargs", "with_hx", "unbatched"), FORWARD_CASES)
def test_forward_matches_torch(kwargs, with_hx, unbatched):
    ours, theirs = build_pair(IN, H, **kwargs)
    x = _random_input(ours, unbatched)
    hx = _random_hx(ours, unbatched) if with_hx else None
    result = ours(x, hx)
    expected = theirs(x, hx)
    assert type(result) is tuple and type(result[1]) is tuple and len(result) == len(result[1]) == 2
    output, (h_n, c_n) = result
    assert_close(output, expected[0])
    assert_close(h_n, expected[1][0])
    assert_close(c_n, expected[1][1])
    # Layout too: the batch_first output is a transposed view, as torch returns it.
    assert output.stride() == expected[0].stride()
    assert output.is_contiguous() == expected[0].is_contiguous()


def test_forward_gradients_match_torch():
    ours, theirs = build_pair(IN, H, num_layers=2, bidirectional=True, proj_size=P)
    x = torch.randn(T, B, IN)
    hx = _random_hx(ours, unbatched=False)
    grads = []
    for module in (ours, theirs):
        leaves = [x.clone().requires_grad_(), *(h.clone().requires_grad_() for h in hx)]
        output, (h_n, c_n) = module(leaves[0], tuple(leaves[1:]))
        (output.sum() + (h_n * 2).sum() + (c_n * 3).sum()).backward()
        grads.append([t.grad for t in leaves] + [p.grad for p in module.parameters()])
    for ours_grad, theirs_grad in zip(*grads, strict=True):
        assert_close(ours_grad, theirs_grad)


def test_forward_keyword_names():
    module = LSTM(IN, H)
    x = torch.randn(T, B, IN)
    hx = _random_hx(module, unbatched=False)
    assert torch.equal(module(input=x, hx=hx)[0], module(x, hx)[0])


def test_hx_as_list_and_omitted_hx_are_zeros():
    module = LSTM(IN, H, num_layers=2, proj_size=P)
    x = torch.randn(T, B, IN)
    zeros = [torch.zeros(2, B, P), torch.zeros(2, B, H)]
    output, (h_n, c_n) = module(x)
    for hx in (zeros, tuple(zeros)):
        other, (other_h, other_c) = module(x, hx)
        assert torch.equal(output, other) and torch.equal(h_n, other_h) and torch.equal(c_n, other_c)


def test_hx_is_not_mutated_or_aliased():
    module = LSTM(IN, H, num_layers=2)
    x = torch.randn(T, B, IN)
    hx = _random_hx(module, unbatched=False)
    before = [h.clone() for h in hx]
    _, (h_n, c_n) = module(x, hx)
    assert all(torch.equal(a, b) for a, b in zip(hx, before, strict=True))
    assert h_n.data_ptr() != hx[0].data_ptr() and c_n.data_ptr() != hx[1].data_ptr()


def test_non_contiguous_input_and_hx():
    ours, theirs = build_pair(IN, H, batch_first=True)
    x = torch.randn(T, B, IN).transpose(0, 1)
    hx = (torch.randn(1, 2 * B, H)[:, ::2], torch.randn(1, B, 2 * H)[:, :, ::2])
    assert not x.is_contiguous() and not any(h.is_contiguous() for h in hx)
    assert_close(ours(x, hx)[0], theirs(x, hx)[0])


# ---------------------------------------------------------------------------------------------------------------
# forward: batch of 0 sequences

EMPTY_BATCH_CASES = [
    pytest.param({}, False, id="default"),
    pytest.param({"num_layers": 2, "bidirectional": True, "proj_size": P}, True, id="bidir-proj-hx"),
    pytest.param({"batch_first": True, "num_layers": 2}, False, id="batchfirst"),
]


@pytest.mark.parametrize(("kwargs", "with_hx"), EMPTY_BATCH_CASES)
def test_empty_batch_matches_torch_and_backpropagates(kwargs, with_hx):
    ours, theirs = build_pair(IN, H, **kwargs)
    x = _random_input(ours, unbatched=False, batch=0)
    hx = _random_hx(ours, unbatched=False, batch=0) if with_hx else None
    results = []
    for module in (ours, theirs):
        leaves = [x.clone().requires_grad_()]
        if hx is not None:
            leaves += [h.clone().requires_grad_() for h in hx]
        output, (h_n, c_n) = module(leaves[0], tuple(leaves[1:]) or None)
        (output.sum() + h_n.sum() + c_n.sum()).backward()
        results.append(
            (
                [(t.shape, t.dtype) for t in (output, h_n, c_n)],
                [t.grad for t in leaves] + [p.grad for p in module.parameters()],
            )
        )
    (ours_layout, ours_grads), (theirs_layout, theirs_grads) = results
    assert ours_layout == theirs_layout
    for ours_grad, theirs_grad in zip(ours_grads, theirs_grads, strict=True):
        assert ours_grad is not None
        assert torch.equal(ours_grad, theirs_grad)


def test_empty_batch_output_sum_backward():
    module = LSTM(IN, H)
    output, _ = module(torch.randn(T, 0, IN))
    output.sum().backward()
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in module.parameters())


# ---------------------------------------------------------------------------------------------------------------
# forward: input checks, each against the error torch raises for the same call


def _meta_hx(module, batch=B):
    return tuple(h.to("meta") for h in _random_hx(module, unbatched=False, batch=batch))


def _forward_with_dropout(module, value):
    module.dropout = value
    return module(torch.randn(T, B, IN))


FORWARD_ERRORS = [
    # (module kwargs, call) -- ``call(module)`` runs one forward.
    pytest.param({}, lambda m: m(torch.randn(T, B, IN, 2)), id="input-4d"),
    pytest.param({}, lambda m: m(torch.randn(IN)), id="input-1d"),
    pytest.param({}, lambda m: m(torch.tensor(1.0)), id="input-0d"),
    pytest.param({}, lambda m: m([[1.0, 2.0, 3.0]]), id="input-list"),
    pytest.param({}, lambda m: m(torch.randn(T, B, IN), _random_hx(m, True)), id="batched-input-2d-hx"),
    pytest.param({}, lambda m: m(torch.randn(T, IN), _random_hx(m, False)), id="unbatched-input-3d-hx"),
    pytest.param(
        {},
        lambda m: m(torch.randn(T, B, IN), (torch.randn(1, B, H), torch.randn(1, H))),
        id="batched-input-mixed-hx-ranks",
    ),
    pytest.param({}, lambda m: m(torch.randn(T, B, IN), (torch.randn(1, B, H),)), id="hx-one-element"),
    pytest.param({}, lambda m: m(torch.randn(T, B, IN), (None, None)), id="hx-none-elements"),
    pytest.param({}, lambda m: m(torch.randn(T, B, IN, dtype=torch.float64)), id="input-float64"),
    pytest.param({}, lambda m: m(torch.ones(T, B, IN, dtype=torch.int64)), id="input-int64"),
    pytest.param({"dtype": torch.float64}, lambda m: m(torch.randn(T, B, IN)), id="float64-module-float32-input"),
    pytest.param({}, lambda m: m(torch.randn(T, B, IN + 1)), id="input-size"),
    pytest.param({"batch_first": True}, lambda m: m(torch.randn(B, T, IN + 1)), id="input-size-batchfirst"),
    pytest.param({}, lambda m: m(torch.randn(T, IN + 1)), id="input-size-unbatched"),
    pytest.param(
        {},
        lambda m: m(torch.randn(T, B, IN), (torch.randn(1, B + 1, H), torch.randn(1, B, H))),
        id="hidden0-batch",
    ),
    pytest.param(
        {"num_layers": 2},
        lambda m: m(torch.randn(T, B, IN), (torch.randn(1, B, H), torch.randn(2, B, H))),
        id="hidden0-layers",
    ),
    pytest.param(
        {"bidirectional": True},
        lambda m: m(torch.randn(T, B, IN), (torch.randn(1, B, H), torch.randn(1, B, H))),
        id="hidden0-directions",
    ),
    pytest.param(
        {},
        lambda m: m(torch.randn(T, B, IN), (torch.randn(1, B, H), torch.randn(1, B, H + 1))),
        id="hidden1-size",
    ),
    pytest.param(
        {"proj_size": P},
        lambda m: m(torch.randn(T, B, IN), (torch.randn(1, B, H), torch.randn(1, B, H))),
        id="proj-hidden0-has-hidden-size",
    ),
    pytest.param(
        {"proj_size": P},
        lambda m: m(torch.randn(T, B, IN), (torch.randn(1, B, P), torch.randn(1, B, P))),
        id="proj-hidden1-has-proj-size",
    ),
    pytest.param(
        {"batch_first": True},
        lambda m: m(torch.randn(B, T, IN), (torch.randn(1, T, H), torch.randn(1, T, H))),
        id="batchfirst-hidden-uses-seq-as-batch",
    ),
    pytest.param(
        {"num_layers": 2},
        lambda m: m(torch.randn(T, IN), (torch.randn(1, H), torch.randn(2, H))),
        id="unbatched-hidden0",
    ),
    pytest.param(
        {"proj_size": P},
        lambda m: m(torch.randn(T, IN), (torch.randn(1, P), torch.randn(1, H + 1))),
        id="unbatched-hidden1",
    ),
    pytest.param({}, lambda m: m(torch.randn(0, B, IN)), id="seq-len-0"),
    pytest.param({}, lambda m: m(torch.randn(0, IN)), id="seq-len-0-unbatched"),
    pytest.param({"batch_first": True}, lambda m: m(torch.randn(B, 0, IN)), id="seq-len-0-batchfirst"),
    pytest.param({}, lambda m: m(torch.randn(0, 0, IN)), id="seq-len-0-batch-0"),
    pytest.param(
        {}, lambda m: m(torch.randn(T, B, IN), (*_random_hx(m, False), torch.randn(1, B, H))), id="hx-three-elements"
    ),
    pytest.param({"device": "meta"}, lambda m: m(torch.randn(T, B, IN)), id="parameters-on-meta"),
    pytest.param({}, lambda m: m(torch.randn(T, B, IN), _meta_hx(m)), id="hx-on-meta"),
    pytest.param({"num_layers": 2}, lambda m: _forward_with_dropout(m, 1.5), id="dropout-1.5-set-later"),
    pytest.param({"num_layers": 2}, lambda m: _forward_with_dropout(m, 2.0), id="dropout-2.0-set-later"),
    pytest.param({"num_layers": 2}, lambda m: _forward_with_dropout(m, -0.25), id="dropout-negative-set-later"),
    # Several errors at once: the first one torch checks wins.
    pytest.param({}, lambda m: m(torch.randn(T, B, IN + 1, dtype=torch.float64)), id="order-dtype-before-input-size"),
    pytest.param(
        {},
        lambda m: m(torch.randn(T, B, IN, dtype=torch.float64), _random_hx(m, True)),
        id="order-hx-rank-before-dtype",
    ),
    pytest.param(
        {},
        lambda m: m(torch.randn(T, B, IN + 1), (torch.randn(1, B + 1, H), torch.randn(1, B, H))),
        id="order-input-size-before-hidden",
    ),
    pytest.param(
        {},
        lambda m: m(torch.randn(0, B, IN), (torch.randn(1, B + 1, H), torch.randn(1, B, H))),
        id="order-hidden-before-seq-len",
    ),
    pytest.param(
        {},
        lambda m: m(torch.randn(0, B, IN), (*_meta_hx(m), torch.randn(1, B, H))),
        id="order-hx-count-before-device",
    ),
    pytest.param(
        {"device": "meta"},
        lambda m: m(torch.randn(T, B, IN), (torch.randn(1, B, H), torch.randn(1, B, H, device="meta"))),
        id="order-hidden-device-before-parameter-device",
    ),
    pytest.param({"device": "meta"}, lambda m: m(torch.randn(0, B, IN)), id="order-device-before-seq-len"),
    pytest.param(
        {"num_layers": 2, "dropout": 0.5},
        lambda m: (setattr(m, "dropout", 1.5), m(torch.randn(0, B, IN))),
        id="order-seq-len-before-dropout",
    ),
]


@pytest.mark.parametrize(("kwargs", "call"), FORWARD_ERRORS)
def test_forward_error_matches_torch(kwargs, call):
    ours, theirs = build_pair(IN, H, **kwargs)
    before = copy.deepcopy(ours)
    assert_same_error(lambda: call(ours), lambda: call(theirs))
    assert_same_parameters(ours, before)
    assert_flat_weights_current(ours)


@pytest.mark.parametrize(
    ("num_layers", "training"),
    [pytest.param(1, True, id="one-layer-training"), pytest.param(2, False, id="two-layers-eval")],
)
def test_out_of_range_dropout_is_accepted_where_torch_never_applies_it(num_layers, training):
    ours, theirs = build_pair(IN, H, num_layers)
    x = torch.randn(T, B, IN)
    for module in (ours, theirs):
        module.dropout = 1.5
        module.train(training)
    assert_close(ours(x)[0], theirs(x)[0])


def test_unbatched_hx_extra_elements_are_ignored_like_torch():
    ours, theirs = build_pair(IN, H)
    x = torch.randn(T, IN)
    hx = (*_random_hx(ours, unbatched=True), torch.randn(1, H))
    assert_close(ours(x, hx)[0], theirs(x, hx)[0])


def test_hx_dtype_mismatch_is_a_runtime_error():
    ours, theirs = build_pair(IN, H)
    x = torch.randn(T, B, IN)
    for hx in ((torch.zeros(1, B, H, dtype=torch.float64), torch.zeros(1, B, H)),
               (torch.zeros(1, B, H), torch.zeros(1, B, H, dtype=torch.float64))):  # fmt: skip
        assert isinstance(raised_by(lambda hx=hx: theirs(x, hx)), RuntimeError)
        message = (
            "Input and hidden tensors are not the same dtype, found input tensor with torch.float32 and hidden "
            "tensor with torch.float64"
        )
        with pytest.raises(RuntimeError, match=exactly(message)):
            ours(x, hx)


def test_weights_of_mixed_dtypes_are_a_runtime_error():
    ours, theirs = build_pair(IN, H)
    for module in (ours, theirs):
        module.weight_hh_l0 = nn.Parameter(module.weight_hh_l0.double())
    x = torch.randn(T, B, IN)
    assert isinstance(raised_by(lambda: theirs(x)), RuntimeError)
    with pytest.raises(RuntimeError, match="All LSTM weights must have the same dtype"):
        ours(x)


def test_hx_as_a_single_tensor_is_a_type_error():
    ours, theirs = build_pair(IN, H)
    x = torch.randn(T, B, IN)
    hx = torch.zeros(2, 1, B, H)
    assert "invalid combination of arguments" in str(raised_by(lambda: theirs(x, hx)))
    with pytest.raises(TypeError, match="invalid combination of arguments"):
        ours(x, hx)


def test_package_exports_the_module():
    assert triton_lstm.LSTM is LSTM
    assert triton_lstm.__all__ == ["LSTM", "convert", "is_patched", "patch", "patched", "unconvert", "unpatch"]
    assert isinstance(LSTM(IN, H), nn.Module) and not isinstance(LSTM(IN, H), nn.RNNBase)
