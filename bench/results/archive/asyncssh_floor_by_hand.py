import asyncio, os, sys, time, subprocess, tempfile
import asyncssh, trio
sys.path.insert(0, "/work/main")
from edge.ssh.asyncssh_gap import skip_empty_ignore_packets, skip_unlogged_packet_logs, send_full_packets, use_sodium_chacha
from edge.ssh.aio import open_aio_loop, aio_as_trio
SIZE = 100 * 1024 * 1024
PACK = open('/tmp/floor/pk/w/.git/objects/pack/pack-5363fb016f2f0a9ad297b0a6a6d240544a99a8c3.pack',"rb").read()
cpu = []
class Server(asyncssh.SSHServer):
    def connection_made(self, conn):
        skip_empty_ignore_packets(conn); skip_unlogged_packet_logs(conn)
        if os.environ.get('SODIUM'): use_sodium_chacha(conn)
    def begin_auth(self, u): return True
    def public_key_auth_supported(self): return True
    def validate_public_key(self, u, k): return True
async def process(proc):
    if os.environ.get("FULL"): send_full_packets(proc.channel); skip_unlogged_packet_logs(proc.channel)
    t = time.process_time()
    sent = 0
    for i in range(0, len(PACK), 256*1024):
        proc.stdout.write(PACK[i:i+256*1024])
        await proc.stdout.drain()
    cpu.append(time.process_time() - t)
    proc.exit(0)
async def main():
    d = tempfile.mkdtemp(); key = asyncssh.generate_private_key("ssh-ed25519")
    key.write_private_key(d + "/id"); os.chmod(d + "/id", 0o600)
    sink = sys.argv[1] if len(sys.argv) > 1 else "devnull"
    async with open_aio_loop():
        acc = await aio_as_trio(asyncssh.listen)("127.0.0.1", 0, server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
            server_factory=Server, process_factory=process, encoding=None, line_editor=False, config=None, window=16*2**20, **({'encryption_algs': [os.environ['CIPHER']]} if os.environ.get('CIPHER') else {}))
        port = acc.sockets[0].getsockname()[1]
        for _ in range(int(os.environ.get('RUNS', '3'))):
            argv = ["ssh", "-F", "/dev/null", "-i", d + "/id", "-p", str(port), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=error", "u@127.0.0.1", "x"]
            if sink == "devnull":
                await trio.run_process(argv, stdout=subprocess.DEVNULL)
            elif sink == "git":
                await trio.run_process(["sh", "-c", "rm -rf /tmp/floor/ip && git init -q --bare /tmp/floor/ip && " + " ".join(argv) + " | git -C /tmp/floor/ip index-pack --stdin"], stdout=subprocess.DEVNULL)
            else:  # a slow reader like git: sha256 of every 64 KiB
                await trio.run_process(["sh", "-c", " ".join(argv) + " | python3 -c 'import sys,hashlib\nwhile (b:=sys.stdin.buffer.read(65536)): hashlib.sha256(b).digest(); hashlib.sha1(b).digest(); hashlib.sha256(b).digest()'"])
        acc.close()
        print("trio-asyncio", sink, os.environ.get("CIPHER", "default"), "gaps" if os.environ.get("FULL") else "no-gaps", [round(c, 3) for c in cpu])
trio.run(main)
