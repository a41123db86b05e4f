# Attention-only timing of the kormo fatbin (loaded with the driver API through ctypes), with
# torch for buffers, events and an SDPA cross-check. FLOPs counted as rust/cuda/src/bin/bench.rs.
import ctypes, glob, math, os, sys, time
import torch

cu = ctypes.CDLL("libcuda.so.1")
def ck(r, what):
    if r != 0:
        raise RuntimeError(f"{what}: CUresult {r}")
torch.zeros(1, device="cuda"); torch.cuda.synchronize()
mod = ctypes.c_void_p()
def load(path):
    global mod
    mod = ctypes.c_void_p()
    data = open(path, "rb").read()
    ck(cu.cuModuleLoadData(ctypes.byref(mod), ctypes.c_char_p(data)), "cuModuleLoadData")
SMEM = {64: (41216, 58880), 128: (82176, 108032)}
def fn(name, smem=0):
    f = ctypes.c_void_p()
    ck(cu.cuModuleGetFunction(ctypes.byref(f), mod, name.encode()), name)
    if smem:
        ck(cu.cuFuncSetAttribute(f, 8, smem), "smem attr")
    return f
P = ctypes.c_uint64; I = ctypes.c_int64
class Fwd(ctypes.Structure):
    _fields_ = [(n, P) for n in "q k v o lse doc".split()] + [(n, I) for n in "batch seq hq hkv qts qhs kts khs vts vhs ots ohs".split()] + [("scale", ctypes.c_float), ("hd", ctypes.c_int32)]
class Bwd(ctypes.Structure):
    _fields_ = [(n, P) for n in "q k v o dout lse delta dqa dq dk dv doc".split()] + [(n, I) for n in "batch seq hq hkv qts qhs kts khs vts vhs ots ohs".split()] + [("scale", ctypes.c_float), ("hd", ctypes.c_int32)]
def launch(f, grid, block, smem, args):
    p = ctypes.pointer(args)
    params = (ctypes.c_void_p * 1)(ctypes.cast(p, ctypes.c_void_p))
    ck(cu.cuLaunchKernel(f, grid[0], grid[1], grid[2], block, 1, 1, smem, ctypes.c_void_p(torch.cuda.current_stream().cuda_stream), params, None), "launch")
def timeit(fnc, iters):
    fnc(); torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(iters): fnc()
    e1.record(); torch.cuda.synchronize()
    return e0.elapsed_time(e1) * 1e3 / iters  # us

def run(b, s, hq, hkv, d, doc_len, iters, check=True):
    t = b * s
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(t, hq, d, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(t, hkv, d, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(t, hkv, d, device="cuda", dtype=torch.bfloat16, generator=g)
    o = torch.empty_like(q); dout = torch.randn_like(q)
    lse = torch.empty(hq, t, device="cuda"); delta = torch.empty(hq, t, device="cuda")
    dqa = torch.empty(t, hq, d, device="cuda"); dq = torch.empty_like(q); dk = torch.empty_like(k); dv = torch.empty_like(v)
    docs = (torch.arange(t, device="cuda", dtype=torch.int64) % s // doc_len).to(torch.int32) if doc_len else None
    variant = f"hd{d}_{'doc' if doc_len else 'causal'}"
    fs, bs = SMEM[d]
    ff, fb = fn(f"kormo_attention_fwd_{variant}", fs), fn(f"kormo_attention_bwd_{variant}", bs)
    fprep, ffin = fn("kormo_attention_bwd_prepare"), fn("kormo_attention_bwd_finish")
    strides = [hq * d, d, hkv * d, d, hkv * d, d, hq * d, d]
    docp = docs.data_ptr() if docs is not None else 0
    fa = Fwd(q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr(), lse.data_ptr(), docp, b, s, hq, hkv, *strides, 1 / math.sqrt(d), d)
    ba = Bwd(q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr(), dout.data_ptr(), lse.data_ptr(), delta.data_ptr(), dqa.data_ptr(), dq.data_ptr(), dk.data_ptr(), dv.data_ptr(), docp, b, s, hq, hkv, *strides, 1 / math.sqrt(d), d)
    fwd = lambda: launch(ff, ((s + 127) // 128, hq, b), 128, fs, fa)
    warps = t * hq
    def bwd():
        launch(fprep, (min((warps * 32 + 255) // 256, 4096), 1, 1), 256, 0, ba)
        launch(fb, ((s + 63) // 64, hkv, b), 128, bs, ba)
        launch(ffin, (min((t * hq * d + 255) // 256, 4096), 1, 1), 256, 0, ba)
    span = min(doc_len, s) if doc_len else s
    flops = 4.0 * d * (s // span) * (span * (span + 1) / 2) * b * hq
    tf = timeit(fwd, iters); tb = timeit(bwd, iters)
    shape = f"b{b} s{s} h{hq}/{hkv} d{d} " + (f"docs of {doc_len}" if doc_len else "causal")
    if not check:
        print(f"| {shape} | fwd {tf:9.1f} us {flops / tf / 1e6:6.1f} TFLOP/s | bwd {tb:9.1f} us {2.5 * flops / tb / 1e6:6.1f} TFLOP/s |", flush=True)
        return
    # cross-check against SDPA (math in f32 on the same inputs), per document
    err = {}
    qq, kk, vv = [x.view(b, s, -1, d).transpose(1, 2).float() for x in (q, k, v)]
    kk = kk.repeat_interleave(hq // hkv, 1); vv = vv.repeat_interleave(hq // hkv, 1)
    qr = qq.detach().requires_grad_(); kr = kk.detach().requires_grad_(); vr = vv.detach().requires_grad_()
    if doc_len:
        pos = torch.arange(s, device="cuda"); dd = pos // doc_len
        mask = (pos[None, :] <= pos[:, None]) & (dd[None, :] == dd[:, None])
        ref = torch.nn.functional.scaled_dot_product_attention(qr, kr, vr, attn_mask=mask)
    else:
        ref = torch.nn.functional.scaled_dot_product_attention(qr, kr, vr, is_causal=True)
    ref.backward(dout.view(b, s, hq, d).transpose(1, 2).float())
    got_o = o.view(b, s, hq, d).transpose(1, 2).float()
    rel = lambda a, r: ((a - r).norm() / r.norm()).item()
    err["o"] = rel(got_o, ref)
    err["dq"] = rel(dq.view(b, s, hq, d).transpose(1, 2).float(), qr.grad)
    dkr = kr.grad.view(b, hkv, hq // hkv, s, d).sum(2); dvr = vr.grad.view(b, hkv, hq // hkv, s, d).sum(2)
    err["dk"] = rel(dk.view(b, s, hkv, d).transpose(1, 2).float(), dkr)
    err["dv"] = rel(dv.view(b, s, hkv, d).transpose(1, 2).float(), dvr)
    print(f"| {shape} | fwd {tf:9.1f} us {flops / tf / 1e6:6.1f} TFLOP/s | bwd {tb:9.1f} us {2.5 * flops / tb / 1e6:6.1f} TFLOP/s | rel err " + " ".join(f"{k} {v:.1e}" for k, v in err.items()) + " |", flush=True)
    del qr, kr, vr, ref; torch.cuda.empty_cache()

print(torch.cuda.get_device_name(), flush=True)
mode = os.environ.get("ATTN_MODE", "full")
for path in sys.argv[1:]:
    load(path)
    print(f"== {os.path.basename(path)}", flush=True)
    if mode == "full":
        shapes = [(2, 4096, 32, 8, 128, 0), (1, 8192, 32, 8, 128, 0), (1, 8192, 32, 8, 128, 2048), (2, 4096, 32, 8, 64, 0)]
    else:
        shapes = [(1, 8192, 32, 8, 128, 0), (1, 8192, 32, 8, 128, 2048)]
    for args in shapes:
        run(*args, iters=10, check=(mode == "full"))
