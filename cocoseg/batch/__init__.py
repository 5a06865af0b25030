"""Batch inference over Ray Data: the evaluate job (COCO AP of weights on a snapshot split) and
the infer job (predictions for a folder, an ``s3://`` prefix or a snapshot of images), both on
the one predictor (:mod:`cocoseg.inference`)."""
