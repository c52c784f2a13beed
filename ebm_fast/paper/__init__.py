"""Reproduction of *Compositional Visual Generation and Inference with Energy Based Models*
(Du, Li & Mordatch, NeurIPS 2020) on top of the :mod:`ebm_fast` library.

This subpackage holds what is specific to the paper: the MuJoCo Scenes data (:mod:`.scenes`,
:mod:`.numpy_render`), the attribute judges (:mod:`.judges`), the shipped concept set and its
condition encoding (:mod:`.concepts`, ``assets/``), the expression grammar of the command line
(:mod:`.expr_parser`), the judged tables and figures (:mod:`.evaluate`, :mod:`.eval_models`,
:mod:`.eval_inference`, :mod:`.eval_two_objects`) and the demo (:mod:`.demo`, :mod:`.demo_concepts`).
It uses only the library's public API; the library never imports it.
"""
