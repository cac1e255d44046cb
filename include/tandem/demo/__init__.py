"""The demo: a sample knowledge base for the fictional product Acme Beacon, and the data around it.

``tandem.demo.data`` holds the paths of the demo files and materialises the knowledge base
(release 1, then the release-2 patch) into a source folder the knowledge cadence indexes.
"""
