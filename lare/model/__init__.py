from lare.model.lare import ABLATIONS, LOSS_TERMS, LaReModel, LossOutput

__all__ = ["ABLATIONS", "LOSS_TERMS", "LaReModel", "LossOutput"]
