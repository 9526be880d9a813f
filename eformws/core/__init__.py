"""The foundation every layer stands on: the wire format and close codes, the message that
travels, who may do what, metrics, and what is taken from Twisted's and Autobahn's private parts."""
