"""Your models. A config names one by its dotpath (conf/model/my_model.yaml: models.MyNet);
trainlab imports this file from the project folder, no PYTHONPATH needed."""

from torch import nn


class MyNet(nn.Module):
    """A small MLP: the place to start writing your own. Its constructor's arguments are the
    keys of conf/model/my_model.yaml."""

    def __init__(self, num_features: int, hidden: int, num_outputs: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Flatten(),
            nn.Linear(num_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_outputs),
        )

    def forward(self, x):
        return self.layers(x)
