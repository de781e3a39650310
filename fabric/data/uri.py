"""``lakefs://REPO/REF/PATH``: the one way to name a dataset, whichever backend holds it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator

from fabric.data.store import DataError

__all__ = ["DataURI", "DatasetURI"]


def _dataset_uri(value: str) -> str:
    if not re.match(r"^lakefs://[^/]+/[^/]+/.+", value):
        raise ValueError("must look like lakefs://REPO/REF/PATH")
    return value


# A config field holding a dataset's URI: checked for its three parts when the config loads.
DatasetURI = Annotated[str, AfterValidator(_dataset_uri)]

SCHEME = "lakefs://"


@dataclass(frozen=True)
class DataURI:
    """A parsed dataset URI. REF is a branch, a tag or a commit id; PATH is a folder or file in the repository.

    Example:
        >>> DataURI.parse("lakefs://iris/main/raw/iris")
        DataURI(repo='iris', ref='main', path='raw/iris')
    """

    repo: str
    ref: str
    path: str = ""

    @classmethod
    def parse(cls, uri: str, need_path: bool = True) -> DataURI:
        """Parses ``uri``; the error names the part that is missing."""
        if not isinstance(uri, str) or not uri.startswith(SCHEME):
            raise DataError(f"dataset URI must look like lakefs://REPO/REF/PATH, got {uri!r}")
        repo, _, rest = uri[len(SCHEME):].partition("/")
        ref, _, path = rest.partition("/")
        path = path.strip("/")
        if not repo:
            raise DataError(f"dataset URI {uri!r} is missing the repository: lakefs://REPO/REF/PATH")
        if not ref:
            raise DataError(f"dataset URI {uri!r} is missing the ref (a branch, tag or commit id): "
                            f"lakefs://{repo}/REF/PATH")
        if need_path and not path:
            raise DataError(f"dataset URI {uri!r} is missing the path inside the repository: "
                            f"lakefs://{repo}/{ref}/PATH")
        return cls(repo, ref, path)

    def at(self, ref: str) -> DataURI:
        """The same dataset at another ref (for example the commit id a branch resolved to)."""
        return DataURI(self.repo, ref, self.path)

    def __str__(self) -> str:
        return f"{SCHEME}{self.repo}/{self.ref}" + (f"/{self.path}" if self.path else "")
