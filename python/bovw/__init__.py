"""bovw: fast bag-of-visual-words pipelines for images, in Rust.

Decode, SIFT, ORB, K-Means, bag-of-visual-words histograms (with spatial
pyramids and soft assignment), VLAD, Gaussian mixtures, Fisher vectors,
kernel maps and PCA, as Arrow/NumPy functions with scikit-learn and Spark
conventions.

>>> import bovw
>>> table = bovw.read_images(bovw.sample_data_path())
>>> table.num_rows
550
"""

from bovw._bovw import __version__
from bovw.cluster import KMeans, MiniBatchKMeans
from bovw.columns import descriptor_matrix
from bovw.decomposition import PCA, pca_partial_sums
from bovw.encoding import VLAD, FisherVector
from bovw.histogram import BagOfWords, bow_histograms, histograms_to_arrow
from bovw.features import FEATURE_COLUMNS, KEYPOINT_DTYPE, ORB, RESOURCE_LIMITS, SIFT, Extractor, keypoints_from_cv2
from bovw.dense import PHOW, DenseSIFT
from bovw.color import ColorHistogram, rgb_to_hsv
from bovw.cnn import CNNEmbedding
from bovw.extractors import EXTRACTORS, extract_descriptors, get_extractor
from bovw.kernel_approximation import AdditiveChi2Sampler, Hellinger, PowerNormalizer
from bovw.kmajority import KMajority, orb_descriptors_as_float
from bovw.mixture import GaussianMixture
from bovw.image import decode_gray, decode_gray_batch, decode_rgb, list_images, read_images, sample_data_path

__all__ = [
    "__version__",
    "AdditiveChi2Sampler",
    "FisherVector",
    "GaussianMixture",
    "Hellinger",
    "PowerNormalizer",
    "VLAD",
    "EXTRACTORS",
    "Extractor",
    "FEATURE_COLUMNS",
    "RESOURCE_LIMITS",
    "KEYPOINT_DTYPE",
    "KMeans",
    "MiniBatchKMeans",
    "PCA",
    "BagOfWords",
    "ColorHistogram",
    "DenseSIFT",
    "PHOW",
    "CNNEmbedding",
    "bow_histograms",
    "histograms_to_arrow",
    "pca_partial_sums",
    "KMajority",
    "ORB",
    "SIFT",
    "decode_gray",
    "descriptor_matrix",
    "decode_gray_batch",
    "decode_rgb",
    "extract_descriptors",
    "get_extractor",
    "keypoints_from_cv2",
    "list_images",
    "orb_descriptors_as_float",
    "read_images",
    "rgb_to_hsv",
    "sample_data_path",
]
