"""Train your own small Keras model on an image folder and save it, for the README's "Your own model".

A functional tf_keras network with Conv + BatchNormalization blocks, a residual Add, a
SeparableConv2D, Dropout and GlobalAveragePooling2D, fed pixels scaled to [0, 1] (so edgepack is
told `--preprocess unit`). Any Keras training code of yours works the same: edgepack only needs the
saved model file.

    python scripts/make_image_folder.py --data ../shared/data/cifar-10-python.tar.gz --out my-images
    python examples/own_model.py --data my-images --out my_model.keras
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from edgepack.data import load_data
from edgepack.runtime.preprocess import scale_pixels
from edgepack.tfkeras import keras


def build(input_shape: tuple[int, int, int], num_classes: int):
    k = keras()
    layers = k.layers

    def conv_bn(x, filters, name):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=name)(x)
        return layers.ReLU()(layers.BatchNormalization()(x))

    # Layers with weights get their own names: TF-MOT's QAT adds a Conv2D named by Keras's counter when
    # it splits the SeparableConv2D, which must not collide with a default name such as "conv2d".
    inp = k.Input(shape=input_shape, name="image")
    x = layers.MaxPooling2D()(conv_bn(inp, 32, "stem"))
    shortcut = x
    x = conv_bn(x, 32, "res_a")
    x = layers.BatchNormalization()(layers.Conv2D(32, 3, padding="same", use_bias=False, name="res_b")(x))
    x = layers.ReLU()(layers.Add()([x, shortcut]))  # the residual block
    x = layers.MaxPooling2D()(x)
    x = layers.SeparableConv2D(64, 3, padding="same", name="sep")(x)
    x = layers.ReLU()(layers.BatchNormalization()(x))
    x = layers.Dropout(0.3)(layers.GlobalAveragePooling2D()(x))
    out = layers.Dense(num_classes, activation="softmax", name="probs")(x)
    return k.Model(inp, out, name="own_model")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="image folder (train/CLASS/*.png, test/CLASS/*.png)")
    p.add_argument("--out", required=True, help="the .keras file to write")
    p.add_argument("--epochs", type=int, default=8)
    args = p.parse_args(argv)
    ds = load_data(args.data)
    keras().utils.set_random_seed(0)
    model = build(tuple(ds.input_shape), len(ds.class_names))
    model.compile(optimizer=keras().optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    t0 = time.time()
    model.fit(scale_pixels(ds.x_train), ds.y_train, epochs=args.epochs, batch_size=32, verbose=2)
    acc = float(np.mean(model.predict(scale_pixels(ds.x_test), verbose=0).argmax(1) == ds.y_test))
    model.save(args.out)
    print(f"{args.out}: {model.count_params():,} parameters, test accuracy {acc:.2%} after "
          f"{time.time() - t0:.0f} s on {len(ds.y_train)} images of {', '.join(ds.class_names)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
