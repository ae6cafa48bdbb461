"""WebSocket echo for the koi-proxy tests (python3-websockets).
ws.py serve PORT                      echo server on 127.0.0.1:PORT
ws.py client HOST IP PORT CA          connect to wss://HOST/ at IP:PORT, send three messages,
                                      print each echo on its own line"""
import asyncio, ssl, sys
import websockets


async def echo(ws, *_):
    async for message in ws:
        await ws.send(message)


async def serve(port):
    async with websockets.serve(echo, "127.0.0.1", port):
        await asyncio.Future()


async def client(host, ip, port, ca):
    ctx = ssl.create_default_context(cafile=ca)
    async with websockets.connect(
        f"wss://{host}:{port}/", ssl=ctx, host=ip, port=port, server_hostname=host
    ) as ws:
        for i in range(3):
            await ws.send(f"hello {i}")
            print(await ws.recv(), flush=True)


if sys.argv[1] == "serve":
    asyncio.run(serve(int(sys.argv[2])))
else:
    asyncio.run(client(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]))
