"""Packaging for eformws; setup.py (not only pyproject) so that the twistd plugin file in
twisted/plugins/ is installed beside Twisted's own, without an __init__.py of ours."""

from setuptools import find_packages, setup
from setuptools.command.editable_wheel import editable_wheel


class EditableWithPlugin(editable_wheel):
    """`pip install -e .` in "compat" mode unless asked otherwise: the checkout on sys.path
    (a .pth file), so Twisted finds twisted/plugins/eformws_plugin.py and `twistd eformws`
    works. (The default PEP 660 modes import through a finder that Twisted's plugin search,
    which walks sys.path, never sees: `twistd: Unknown command: eformws`.)"""

    def initialize_options(self):
        super().initialize_options()
        self.mode = "compat"


setup(
    cmdclass={"editable_wheel": EditableWithPlugin},
    name="eformws",
    version="0.1.0",
    description="Real-time gateway of the eform locker system (WebSocket, WAMP, HTTP API)",
    python_requires=">=3.11",
    packages=find_packages(include=["eformws", "eformws.*"]) + ["twisted.plugins"],
    package_data={"twisted.plugins": ["eformws_plugin.py"], "eformws.http.console": ["static/*"]},
    install_requires=[
        "twisted>=24.3",
        "autobahn>=24.4",
        "klein>=23.12",
        "msgpack>=1.0",
        "cbor2>=5.4",
        "prometheus_client>=0.20",
        "treq>=23.11",
        "txaio>=23.1",
        "txredisapi>=1.6",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-twisted>=1.14",
            "hypothesis>=6.100",
            "websockets>=13",
            "playwright>=1.45",  # drives Debian's chromium (scripts/test installs it); no browser download
            "schemathesis>=4.32,<5",
            "openapi-spec-validator>=0.7",
            "jsonschema>=4.18",
            "pyyaml>=6",
        ],
        "bench": [
            "uvloop>=0.19",
            "python-socketio>=5.11",
            "aiohttp>=3.9",
            "matplotlib>=3.8",
            "py-spy>=0.3.14",
        ],
    },
    entry_points={"console_scripts": ["eformws = eformws.cli:main"]},
)
