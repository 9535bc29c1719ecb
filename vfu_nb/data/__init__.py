"""DeepFashion-C data: from the annotation files to batches on the device, and the synthetic stand-in.

* :mod:`vfu_nb.data.annotations`: the reader and writer of the annotation files (one :class:`Annotations` table).
* :mod:`vfu_nb.data.crops`: decoding, the box crop resized to ``S x S``, landmarks in crop units, normalisation.
* :mod:`vfu_nb.data.cache`: the parallel decode that fills the uint8 cache; memoised annotations.
* :mod:`vfu_nb.data.identity`: the digest that tells whether two data roots hold the same tree.
* :mod:`vfu_nb.data.dataset`: :class:`DeepFashionC`, one split as a torch Dataset (optionally cached).
* :mod:`vfu_nb.data.augment`: flip and scale/shift jitter of one item or of a batch on its device.
* :mod:`vfu_nb.data.loader`: :class:`BatchLoader`, whole batches of a cached split with a prefetch thread.
* :mod:`vfu_nb.data.summary`: what a tree holds (splits, categories, attributes, visibility) as tables and numbers.
* :mod:`vfu_nb.data.synthetic`: the synthetic benchmark generator (``python -m vfu_nb.data.synthetic``).
"""
