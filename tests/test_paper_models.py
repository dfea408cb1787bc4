"""Parameter counts and output shapes of the paper's models."""

import pytest
import torch

from lbgm_mpi.models.paper import PAPER_MODELS

MNIST, CIFAR = (1, 28, 28), (3, 32, 32)


@pytest.mark.parametrize("name,in_shape,num_classes,params", [
    ("fcn", MNIST, 10, 7_850),
    ("lenet", MNIST, 10, 431_080),  # 20*25+20 + 50*20*25+50 + 800*500+500 + 500*10+10
    ("resnet18", CIFAR, 10, 11_173_962),
    ("resnet18", CIFAR, 100, 11_220_132),
    ("vgg19", CIFAR, 10, 20_040_522),
    ("vgg19", CIFAR, 100, 20_086_692),
])
def test_parameter_count_and_output_shape(name, in_shape, num_classes, params):
    torch.manual_seed(0)
    model = PAPER_MODELS[name](in_shape, num_classes)
    assert sum(p.numel() for p in model.parameters()) == params
    assert model(torch.randn(2, *in_shape)).shape == (2, num_classes)


@pytest.mark.parametrize("name", ["fcn", "lenet", "resnet18"])
def test_other_input_sizes(name):
    model = PAPER_MODELS[name]((3, 32, 32), 2)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 2)


def test_batchnorm_keeps_running_stats():
    model = PAPER_MODELS["resnet18"](CIFAR, 10)
    assert all(m.track_running_stats for m in model.modules()
               if isinstance(m, torch.nn.BatchNorm2d))


def test_too_small_input_is_rejected():
    with pytest.raises(ValueError, match="vgg19 needs inputs at least 32x32"):
        PAPER_MODELS["vgg19"](MNIST, 10)


def test_evaluation_batches_bound_activations_and_give_the_one_batch_figures():
    from lbgm_mpi.models.layout import flatten
    from lbgm_mpi.training.client import EVAL_BATCH, eval_batch_size, evaluate
    torch.manual_seed(0)
    wide = torch.nn.Sequential(torch.nn.Linear(64, 200_000), torch.nn.ReLU(),
                               torch.nn.Linear(200_000, 10))
    x, y = torch.randn(300, 64), torch.randint(0, 10, (300,))
    batch = eval_batch_size(wide, x)
    # 2 x 200,000 float32 outputs per sample: 1.6 MB, so 41 samples fit in 64 MB
    assert batch == (64 << 20) // (4 * (200_000 * 2 + 10)) < len(y)
    acc, loss = evaluate(wide, flatten(wide), x, y)
    whole = evaluate(wide, flatten(wide), x, y, batch=len(y))
    assert acc == whole[0] and loss == pytest.approx(whole[1], rel=1e-6)
    resnet = PAPER_MODELS["resnet18"](CIFAR, 10)
    assert 1 < eval_batch_size(resnet.eval(), torch.randn(4, *CIFAR)) < 128
    assert eval_batch_size(PAPER_MODELS["fcn"](MNIST, 10), torch.randn(4, *MNIST)) == EVAL_BATCH
