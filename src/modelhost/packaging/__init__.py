"""`modelhost package`: a model bundled with modelhost and every wheel, to serve with no network."""

from modelhost.packaging.bundle import Bundle, PackageOptions, package
from modelhost.packaging.wheels import PackagingFailed

__all__ = ["Bundle", "PackageOptions", "PackagingFailed", "package"]
