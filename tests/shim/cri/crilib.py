"""What the CRI client tests share: the generated stubs, a runtime client on
containerd's socket, and the `ok:` / `FAIL:` reporting."""
import sys

T = 120  # seconds per call: a VM boots under TCG here


def connect(sock, gendir):
    """(api_pb2 module, RuntimeServiceStub) for containerd's CRI socket."""
    sys.path.insert(0, gendir)
    import grpc
    import api_pb2
    import api_pb2_grpc

    ch = grpc.insecure_channel("unix://" + sock)
    return api_pb2, api_pb2_grpc.RuntimeServiceStub(ch)


def ok(msg):
    print("ok:", msg, flush=True)


def fail(msg):
    print("FAIL:", msg, flush=True)
    sys.exit(1)
