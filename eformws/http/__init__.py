"""The HTTP face: the Twisted site with its limits (site), the Klein API under /api
(api), and the staff console's files (console/)."""
