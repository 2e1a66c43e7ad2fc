from lare.model.lare import ABLATIONS, LaReModel
from lare.model.losses import LOSS_TERMS, LossOutput

__all__ = ["ABLATIONS", "LOSS_TERMS", "LaReModel", "LossOutput"]
