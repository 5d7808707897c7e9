"""Recovery after pruning: a short training of the pruned model on the calibration tokens, with LoRA
adapters merged into its weights at the end, so what is saved is a plain transformers model of the
pruned shape. What it is asked (settings), the adapters (lora), the dense model's logits to distil
from (distill) and the training loop with its per-step report and cancel (loop)."""
