"""Methods (registered LightningModules) and the encoders they share."""
from xsearch.models.base import RetrievalModule
from xsearch.models.clip import CLIPTowers
from xsearch.models.cmsn import CMSN
from xsearch.models.dual_encoder import DualEncoder
from xsearch.models.encoders import ImageEncoder, Projection, SentenceEncoder, TextEncoder
from xsearch.models.export_contract import ExportTowers, ExportUnsupported
from xsearch.models.idclip import IdCLIP
from xsearch.models.iresnet import IResNet
from xsearch.models.irra import IRRA
from xsearch.models.partlevel import PartLevel
from xsearch.models.pretrained_towers import PretrainedTowers
from xsearch.models.tgfr import TGFR
from xsearch.models.towers import TowerOutput, Towers
from xsearch.models.xmodal import XModal

__all__ = ["CLIPTowers", "CMSN", "DualEncoder", "ExportTowers", "ExportUnsupported", "IRRA", "IdCLIP", "IResNet",
           "ImageEncoder", "PartLevel", "PretrainedTowers", "Projection", "RetrievalModule", "SentenceEncoder", "TGFR",
           "TextEncoder", "TowerOutput", "Towers", "XModal"]
