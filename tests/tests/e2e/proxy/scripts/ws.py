"""WebSocket echo for the koi-proxy tests (python3-websockets).
ws.py serve PORT                      echo server on 127.0.0.1:PORT
ws.py client HOST IP PORT CA          connect to wss://HOST/ at IP:PORT, send three messages,
                                      print each echo on its own line
ws.py hold HOST IP PORT CA            connect, print one echo and "open", then send nothing (no
                                      pings either) and print "closed" when the other side closes
                                      the tunnel, or "still open" after 120 s"""
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


async def hold(host, ip, port, ca):
    ctx = ssl.create_default_context(cafile=ca)
    ws = await websockets.connect(
        f"wss://{host}:{port}/", ssl=ctx, host=ip, port=port, server_hostname=host,
        ping_interval=None,
    )
    await ws.send("hello")
    print(await ws.recv(), flush=True)
    print("open", flush=True)
    try:
        await asyncio.wait_for(ws.wait_closed(), 120)
        print("closed", flush=True)
    except asyncio.TimeoutError:
        print("still open", flush=True)


if sys.argv[1] == "serve":
    asyncio.run(serve(int(sys.argv[2])))
elif sys.argv[1] == "hold":
    asyncio.run(hold(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]))
else:
    asyncio.run(client(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]))
