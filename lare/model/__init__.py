from lare.model.answer import Answer, RefocusStep
from lare.model.generate import TOKEN_KEYS, Generation
from lare.model.losses import LOSS_TERMS, LossOutput
from lare.model.modeling import ABLATIONS, LaReModel

__all__ = ["ABLATIONS", "LOSS_TERMS", "TOKEN_KEYS", "Answer", "Generation", "LaReModel", "LossOutput", "RefocusStep"]
