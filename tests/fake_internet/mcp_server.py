"""A real MCP server for the tests: the official `mcp` Python SDK (2.x,
`MCPServer`) over streamable HTTP at /mcp, behind a bearer-token check (401
without $FAKE_TOKEN). Tools: `add(a, b)` and `echo(text)`.

usage: mcp_server.py <listen-ip> <port>
"""
import os
import sys

import uvicorn
from mcp.server.mcpserver import MCPServer
from starlette.responses import PlainTextResponse

TOKEN = os.environ["FAKE_TOKEN"].encode()
HOST, PORT = sys.argv[1], int(sys.argv[2])

server = MCPServer("fake-internet", log_level="WARNING")


@server.tool(description="Adds two integers.")
def add(a: int, b: int) -> str:
    return str(a + b)


@server.tool(description="Answers with the text it was given.")
def echo(text: str) -> str:
    return text


# Not bound to a loopback name: no DNS-rebinding host check (the client
# dials an address).
app = server.streamable_http_app(host="0.0.0.0", json_response=True)


async def authorized(scope, receive, send):
    if scope["type"] == "http" and dict(scope["headers"]).get(b"authorization") != b"Bearer " + TOKEN:
        return await PlainTextResponse("a valid bearer token is required", status_code=401)(scope, receive, send)
    await app(scope, receive, send)


uvicorn.run(authorized, host=HOST, port=PORT, log_level="warning")
