import shlex

from advreid.profile import flatten, override_args


def test_flatten_and_override_args_mark_new_keys_with_plus():
    base = {"seed": 0, "reid": {"models": {"small": {"epochs": 3, "arch": "small_cnn"}}, "targets": ["b"]}}
    overrides = {
        "reid": {"models": {"small": {"epochs": 120}, "resnet50": {"arch": "resnet50"}}, "targets": ["x", "y"]}
    }
    assert flatten(base) == {
        "seed": 0,
        "reid.models.small.epochs": 3,
        "reid.models.small.arch": "small_cnn",
        "reid.targets": ["b"],
    }
    args = override_args(overrides, base)
    assert args == [
        "-S",
        "reid.models.small.epochs=120",
        "-S",
        "+reid.models.resnet50.arch=resnet50",
        "-S",
        'reid.targets=["x", "y"]',
    ]
    assert shlex.split(shlex.join(args)) == args
