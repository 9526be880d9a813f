"""What starts and stops it all: configuration, TLS, the Twisted services, listening
endpoints, worker processes and the demo."""
