"""The engine: fast 3x3 convolutions on channels-last buffers and the VGG19 path that runs them.

Every fast piece here is tested against the plain code of ``nstlite.layers`` (its oracle).
Dependencies point one way: ``channels_last -> plan -> winograd, gemm -> layout, workspace``,
and the engine reads ``nstlite.layers`` (pooling, the reference conv) but never the reverse.

Modules
-------
``toom_cook``      the exact derivation of Winograd's F(4, 3) matrices from interpolation points
``winograd``       F(4x4, 3x3): the transforms, the convolution and its input gradient
``gemm``           shifted-GEMM and im2col convolutions and their adjoints
``layout``         the zero-padded channels-last buffers every kernel reads and writes
``workspace``      shared scratch memory and the thread settings (read on first use)
``plan``           one conv layer's kernel choice and weight forms; the kernel registry
``channels_last``  VGG19's forward and input-gradient passes on those buffers
"""
