"""Catalogue, encoders, Qdrant stores and retrieval.

The public API is re-exported here; submodules hold one concept each.
"""

from retrieval.catalogue import Catalogue, ColumnMapping, LoadIssue, Product, load_catalogue
from retrieval.categories import CategoryIndex
from retrieval.encoders import ImageEncoder, OpenClipImageEncoder, SentenceTransformerTextEncoder, TextEncoder
from retrieval.errors import (
    CatalogueError,
    EncoderError,
    EncoderMismatchError,
    ImageError,
    ImageTooLargeError,
    IndexNotFoundError,
    InvalidQueryError,
    RetrievalError,
    StoreError,
    UnsupportedImageError,
)
from retrieval.hierarchical import HierarchicalRetriever, Level1Config, SearchMode, SearchResult
from retrieval.images import ImageLimits, decode_image, read_image_file
from retrieval.indexer import IndexReport, build_index
from retrieval.search import Retriever, SearchHit, SearchQuery
from retrieval.store import IndexManifest, SearchFilter, VectorStore

__all__ = [
    "Catalogue",
    "CatalogueError",
    "CategoryIndex",
    "ColumnMapping",
    "EncoderError",
    "EncoderMismatchError",
    "HierarchicalRetriever",
    "ImageEncoder",
    "ImageError",
    "ImageLimits",
    "ImageTooLargeError",
    "IndexManifest",
    "IndexNotFoundError",
    "IndexReport",
    "InvalidQueryError",
    "Level1Config",
    "LoadIssue",
    "OpenClipImageEncoder",
    "Product",
    "RetrievalError",
    "Retriever",
    "SearchFilter",
    "SearchHit",
    "SearchMode",
    "SearchQuery",
    "SearchResult",
    "SentenceTransformerTextEncoder",
    "StoreError",
    "TextEncoder",
    "UnsupportedImageError",
    "VectorStore",
    "build_index",
    "decode_image",
    "load_catalogue",
    "read_image_file",
]
