"""Reproduction of *Compositional Visual Generation and Inference with Energy Based Models*
(Du, Li & Mordatch, NeurIPS 2020) on top of the :mod:`ebm_fast` library.

This subpackage holds what is specific to the paper: the MuJoCo Scenes data (:mod:`.scenes`,
:mod:`.numpy_render`; :mod:`.training_data` makes it a training data source), the attribute judges
(:mod:`.judges`), the shipped concept set and its condition encoding (:mod:`.concepts`, ``assets/``),
the expression grammar of the command line (:mod:`.expr_parser`) and the chain options of the commands
that sample concepts (:mod:`.chain_options`), the judged tables and figures (:mod:`.evaluate`,
:mod:`.eval_models`, :mod:`.eval_inference` with :mod:`.inference_splits` and :mod:`.regressor`,
:mod:`.eval_two_objects`) and the demo (:mod:`.demo`, :mod:`.demo_concepts`). It uses only the
library's public API; the library never imports it. The commands live in :mod:`ebm_fast.cli`.
"""
