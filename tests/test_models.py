"""Reference models: shapes, names, learnable activations."""

from __future__ import annotations

import torch
from torch import nn

from trainlab.build import build_model
from trainlab.models import ConvBase, sequential


def test_convbase_matches_the_papers_shape():
    model = ConvBase(input_length=40, channels=25, num_outputs=10, activation=nn.ReLU)
    assert model.linear.in_features == 125  # 25 channels x 5 points, as in the paper
    assert model(torch.randn(7, 40)).shape == (7, 10)
    # conv1 150 + conv2 1900 + conv3 1900 + linear 1260: the paper's 5.2k parameters
    assert sum(p.numel() for p in model.parameters()) == 5210


def test_sequential_keeps_the_layer_names_and_order(make_cfg):
    model = build_model(make_cfg("model=sequential").model)
    assert [name for name, _ in model.named_children()] == [
        "flatten",
        "fc1",
        "act1",
        "fc2",
        "act2",
        "fc3",
    ]
    assert isinstance(model.act1, nn.PReLU)
    assert "act1.weight" in dict(model.named_parameters())  # PReLU's slope is learned
    assert model(torch.randn(3, 40)).shape == (3, 10)


def test_layers_can_be_added_and_changed_from_the_command_line(make_cfg):
    cfg = make_cfg(
        "model=sequential",
        "model.layers.fc1.out_features=64",
        "model.layers.fc2.in_features=64",
        "+model.layers.drop={_target_:torch.nn.Dropout,p:0.5}",
    )
    model = build_model(cfg.model)
    assert model.fc1.out_features == 64
    assert list(dict(model.named_children()))[-1] == "drop"


def test_mlp_activation_is_selectable_and_built_per_layer(make_cfg):
    model = build_model(make_cfg("model=mlp", "model.activation._target_=torch.nn.PReLU").model)
    prelus = [m for m in model.modules() if isinstance(m, nn.PReLU)]
    assert len(prelus) == 2 and prelus[0] is not prelus[1]


def test_direct_sequential_helper():
    model = sequential({"a": nn.Linear(2, 3), "b": nn.ReLU()})
    assert list(dict(model.named_children())) == ["a", "b"]
