"""A distributed training loop for strategies that Keras 3's `fit` cannot drive.

Keras 3 `fit` fails under MultiWorkerMirroredStrategy (keras-team/keras#20585: it reduces nested input
batches and scalar metrics across workers). This loop runs the same step through `strategy.run` and
drives the same Keras callbacks, so checkpoints, TensorBoard and progress behave as under `fit`.
"""

from __future__ import annotations

import numpy as np


def fit_distributed(strategy, model, optimizer, dataset, global_batch: int, epochs: int, initial_epoch: int,
                    callbacks: list) -> None:
    """Train ``model`` ([image, label] -> logits) on ``dataset`` of ((image, label), label) batches."""
    import keras
    import tensorflow as tf

    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    variables = model.trainable_variables

    def replica_step(inputs):
        (x, y), labels = inputs
        with tf.GradientTape() as tape:
            logits = model([x, y], training=True)
            per_example = loss_fn(labels, logits)
            # Averaged over the global batch, so summing gradients across replicas gives the mean.
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        hits = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32),
                                              tf.cast(labels, tf.int32)), tf.float32))
        return tf.reduce_sum(per_example), hits, tf.cast(tf.size(labels), tf.float32)

    @tf.function
    def train_step(batch):
        results = strategy.run(replica_step, args=(batch,))
        return [strategy.reduce(tf.distribute.ReduceOp.SUM, r, axis=None) for r in results]

    distributed = strategy.experimental_distribute_dataset(dataset)
    cbs = keras.callbacks.CallbackList(callbacks, model=model)
    cbs.on_train_begin()
    for epoch in range(initial_epoch, epochs):
        cbs.on_epoch_begin(epoch)
        totals = np.zeros(3)
        for step, batch in enumerate(distributed):
            cbs.on_train_batch_begin(step)
            totals += [float(v) for v in train_step(batch)]
            cbs.on_train_batch_end(step, {"loss": totals[0] / totals[2]})
        cbs.on_epoch_end(epoch, {"accuracy": totals[1] / totals[2], "loss": totals[0] / totals[2]})
    cbs.on_train_end()
