"""Explanations: class-activation maps (the Grad-CAM family), ROAD faithfulness and the
interactive viewer. Imports training (to predict), evaluation and plots."""
