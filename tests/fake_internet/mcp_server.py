"""A real MCP server for the tests: the official `mcp` Python SDK (2.x,
`MCPServer`) over streamable HTTP at /mcp, behind a bearer-token check (401
without $FAKE_TOKEN). Tools: `add(a, b)` and `echo(text)`.

/token is its OAuth token endpoint: a refresh-token grant with the refresh
token `$FAKE_TOKEN-refresh` gets $FAKE_TOKEN as the new access token; any
other gets 400 `invalid_grant`, its description echoing the refresh token
sent (as careless servers do: what shows it must scrub it).

usage: mcp_server.py <listen-ip> <port>
"""
import os
import sys

import uvicorn
from mcp.server.mcpserver import MCPServer
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse

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


REFRESH = TOKEN.decode() + "-refresh"


async def token_endpoint(scope, receive, send):
    form = await Request(scope, receive).form()
    if form.get("grant_type") == "refresh_token" and form.get("refresh_token") == REFRESH:
        answer = JSONResponse({"access_token": TOKEN.decode(), "token_type": "Bearer", "expires_in": 3600})
    else:
        answer = JSONResponse({"error": "invalid_grant",
                               "error_description": f"refresh token {form.get('refresh_token')} is not valid"},
                              status_code=400)
    await answer(scope, receive, send)


async def authorized(scope, receive, send):
    if scope["type"] == "http" and scope["path"] == "/token":
        return await token_endpoint(scope, receive, send)
    if scope["type"] == "http" and dict(scope["headers"]).get(b"authorization") != b"Bearer " + TOKEN:
        return await PlainTextResponse("a valid bearer token is required", status_code=401)(scope, receive, send)
    await app(scope, receive, send)


uvicorn.run(authorized, host=HOST, port=PORT, log_level="warning")
