"""Blob storage for photo bytes, picked by FARM_STORAGE_URL (s3://bucket/prefix or file:///path).

Importing this package does not import boto3; only opening an s3:// store does.
"""

from tasks.blobs.base import (
    BlobInfo,
    BlobNotFound,
    BlobStore,
    check_key,
    open_store,
    photo_key,
)

__all__ = ["BlobInfo", "BlobNotFound", "BlobStore", "check_key", "open_store", "photo_key"]
