"""Model bundles on disk: the manifest read and verified (`bundle`), which bundle to use (`locate`), model cards, signatures."""
