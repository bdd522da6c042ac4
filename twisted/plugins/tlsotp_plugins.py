"""twistd plugins for tlsotp's three parties.

Kept tiny and lazy: ServiceMaker imports the named module only when that plugin runs.
"""

from twisted.application.service import ServiceMaker

tlsotpTTP = ServiceMaker(
    "tlsotp-ttp",
    "tlsotp.commands.ttp_daemon",
    "tlsotp trusted third party: a certificate authority serving enrollment",
    "tlsotp-ttp",
)
tlsotpServer = ServiceMaker(
    "tlsotp-server",
    "tlsotp.commands.server_daemon",
    "tlsotp bank server: mutually authenticated handshake, then a one-time password",
    "tlsotp-server",
)
tlsotpClient = ServiceMaker(
    "tlsotp-client",
    "tlsotp.commands.client_daemon",
    "tlsotp client: enroll, handshake with the server, receive and verify the OTP",
    "tlsotp-client",
)
