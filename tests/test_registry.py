import warnings

import pytest

from dmlbench.errors import ConfigError, UnknownNameError
from dmlbench.losses import LOSSES, Loss
from dmlbench.miners import MINERS
from dmlbench.registry import Registry


def test_unknown_name_lists_valid_choices():
    with pytest.raises(UnknownNameError) as info:
        LOSSES.get("tripplet")
    message = str(info.value)
    assert "unknown loss 'tripplet'" in message
    assert "did you mean 'triplet'" in message
    for name in LOSSES.names():
        assert name in message


def test_unknown_miner_lists_valid_choices():
    with pytest.raises(UnknownNameError, match="valid miner names: " + ", ".join(MINERS.names())):
        MINERS.get("hardest")


def test_create_drops_none_and_rejects_unknown_kwargs():
    loss = LOSSES.create("triplet", margin=None)
    assert loss.margin == 0.2  # the component's own default
    with pytest.raises(ConfigError, match="takes no argument 'marign'; its arguments are: margin, variant, reduction"):
        LOSSES.create("triplet", marign=0.1)


def test_import_path_gives_user_class():
    cls = LOSSES.get("dmlbench.losses.triplet:TripletMarginLoss")
    assert issubclass(cls, Loss)
    with pytest.raises(ConfigError, match="not a subclass"):
        LOSSES.get("collections:OrderedDict")
    with pytest.raises(ConfigError, match="cannot import module 'no_such_module'"):
        LOSSES.get("no_such_module:Thing")
    with pytest.raises(ConfigError, match="has no attribute 'Nope'"):
        LOSSES.get("dmlbench.losses:Nope")


def test_registering_twice_warns():
    registry = Registry("thing")

    @registry.register("a")
    class A:
        pass

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        @registry.register("a")
        class B:
            pass

    assert any("registered twice" in str(w.message) for w in caught)
    assert registry.get("a") is B
