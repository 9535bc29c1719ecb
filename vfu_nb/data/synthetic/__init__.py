"""Synthetic DeepFashion-C benchmark generator (version 2).

Writes a directory tree that a DeepFashion-C reader cannot tell from the real dataset
(``Anno/*.txt``, ``Eval/list_eval_partition.txt``, ``img/<Item_Folder>/img_XXXXXXXX.jpg``), filled with
procedurally drawn garments of 28 categories. The benchmark tests one idea: knowing where a garment's
functional parts are (collar, sleeve ends, waistline, hem) helps to read the local evidence there.
So, within a clothes type, categories share silhouette families and differ mainly in what is drawn
*at* those points (neckline or collar form, cuff, waist detail, hem finish) and in fabric/texture,
while the landmark geometry says only some of it:

* ``geometry_informativeness`` G: with probability G an image's silhouette (sleeve length, body and
  leg length, fit, flare, leg cut, skirt/legs/long body) is drawn from its own category's distribution,
  otherwise from the pooled distribution of its clothes type (that of a donor category drawn by
  frequency). G = 0: the silhouette says nothing about the category beyond the clothes type;
  G = 1: the silhouette comes from the category.
* Landmarks are written with annotation noise: per-point jitter (``landmark_noise``, sd as a
  fraction of the box side) and a rate of wrong visible/occluded flags (``visibility_flip``).
  The rendered garment is not affected.
* ``evidence_placement``: "functional" (the benchmark) or "displaced", the negative control: every
  local part is moved as a whole to a random point of the garment's body, away from the landmarks,
  while labels, silhouette, view, colours, landmarks and boxes stay those of the functional tree.

Labels come only from what is rendered: a garment is sampled as a *spec* (one value per slot), the
attribute labels are a function of the spec, and the drawing code renders exactly that spec.
Attributes are correlated with the category (each category has its own slot distributions) but are
not a function of it. Clutter, occluders (visibility 1), truncation (visibility 2) and
scale/position/rotation jitter make the scenes harder. See docs/synthetic.md.

Usage::

    python -m vfu_nb.data.synthetic --out data/synth --n 4000 --seed 0 [--workers 2]
        [--geometry-informativeness 0.35] [--landmark-noise 0.02] [--visibility-flip 0.03]
        [--evidence-placement displaced]

    from vfu_nb.data.synthetic.driver import generate
    summary = generate("data/synth", n=4000, seed=0, geometry_informativeness=0.35)

Re-running with the same arguments returns at once (``cached``); a tree written by another version
or with other settings is regenerated.

Determinism: image ``i`` is drawn from ``SeedSequence(seed, spawn_key=(1, i))`` (its annotation
noise from ``spawn_key=(3, i)``, its displaced part positions from ``spawn_key=(4, i)``) only, so the
output is byte-identical for any number of workers (on one platform/library stack) and the first ``k``
images of a run equal those of any larger run with the same seed and settings.

Format decisions where the real data is silent: landmark x/y use the same 1-based pixel index as the
boxes (``floor(x) + 1``); truncated landmarks (visibility 2) are clamped into ``1..W`` / ``1..H``;
boxes are the 1-based inclusive extent of the garment pixels (occluded parts included) clipped to
the image, widened if needed to contain the clamped (noise-free) landmarks; written (noisy)
landmarks are clamped into the box.

Modules, in the order of the pipeline:

* :mod:`~vfu_nb.data.synthetic.settings`: the fixed format, the settings' defaults and ranges, :class:`OptionError`.
* :mod:`~vfu_nb.data.synthetic.specs`: vocabularies, slots and labels, per-category distributions (``tables.yaml``),
  sampling a spec.
* :mod:`~vfu_nb.data.synthetic.planning`: folders, file names, categories and splits, before any rendering.
* :mod:`~vfu_nb.data.synthetic.textures`: colours, textures and fabrics.
* :mod:`~vfu_nb.data.synthetic.shapes`, :mod:`~vfu_nb.data.synthetic.garment`, :mod:`~vfu_nb.data.synthetic.parts`:
  the garment in canonical units: its pieces, the silhouette and keypoints, the local parts.
* :mod:`~vfu_nb.data.synthetic.displaced`: the negative control's displaced parts.
* :mod:`~vfu_nb.data.synthetic.scene`: one rendered image with its box and landmarks.
* :mod:`~vfu_nb.data.synthetic.evidence`: where the drawn evidence lies relative to the landmarks.
* :mod:`~vfu_nb.data.synthetic.driver`: :func:`generate` and the command line.

Names with a leading underscore are shared between these modules; they are not the package's API.
"""
