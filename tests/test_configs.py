"""Every experiment config builds, validates, and its model fits its data's shape."""

import importlib

import pytest

from jax_dae import models, validation

CONFIGS = [
    ("lfw_cae", None), ("lfw_cae", "runlocal"), ("lfw_rescae", None), ("lfw_vcae", None),
    ("lfw_cae_perceptual", None), ("lfw_cae_mixed", "rho=0.5"), ("lfw_cae_pixelate", None),
    ("lfw_cae_pixelate", "mpl1"), ("mnist_dae", "depth=1,latent=13"),
    ("mnist_dae", "depth=5,latent=5"), ("mnist_dae", "runlocal"),
    ("faces64_dense_ae", "distortion=gaussian"), ("faces64_dense_ae", "runlocal"),
    ("faces64_fcae", None), ("faces100_dual_ae", "model=SingleAE_sep"),
    ("faces100_dual_ae", "model=DualAE"), ("faces100_dual_ae", "runlocal"),
]


def _image_shape(config):
  if config.data.name == "mnist":
    return (28, 28, 1)
  return (config.data.crop, config.data.crop, 1 if config.data.mode == "L" else 3)


@pytest.mark.parametrize("name, arg", CONFIGS)
def test_config_validates_and_model_fits_data(name, arg):
  config = importlib.import_module(f"configs.{name}").get_config(arg)
  validation.validate_config(config)
  shape = _image_shape(config)
  model = models.from_config(config, out_channels=shape[-1])
  models.check_fits(model, config.model.name, shape)
  assert config.train.batch_size >= 1 and config.train.num_epochs >= 1


def test_unknown_config_argument_is_refused():
  for name in ("lfw_cae", "mnist_dae", "faces64_dense_ae", "faces100_dual_ae"):
    with pytest.raises(ValueError, match="Unknown config argument"):
      importlib.import_module(f"configs.{name}").get_config("bogus")


def test_faces64_bottleneck_reaches_only_the_dense_models():
  from configs import faces64_dense_ae, faces64_fcae

  def bottleneck(config):
    return models.from_config(config).bottleneck

  assert bottleneck(faces64_dense_ae.get_config()) == 1000  # the seed's final model
  assert bottleneck(faces64_dense_ae.get_config("bottleneck=128")) == 128
  net2 = faces64_dense_ae.get_config()
  net2.model.name = "GrazAE_net2"
  assert bottleneck(net2) == 4096  # table 1's networks keep their own
  assert bottleneck(faces64_fcae.get_config()) is None  # fully convolutional
  assert bottleneck(faces64_fcae.get_config("runlocal")) is None
  with pytest.raises(ValueError, match="no dense bottleneck"):
    faces64_fcae.get_config("bottleneck=512")
