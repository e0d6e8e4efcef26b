/*
 * dropkit's CPU kernels of dropkit::dropout, dropkit::dropout_ and dropkit::gaussian_dropout, registered with
 * PyTorch's dispatcher from C++ (the same registration TORCH_LIBRARY_IMPL makes), so that an eager call reaches
 * the C kernel without a trip through a Python kernel and ctypes; and the Autograd kernels of the ops linear in
 * x (dropout, gaussian_dropout, drop_block, embedding_dropout), of dropout_ and of fused_bias_act_dropout_add, for
 * every device.
 *
 * Built at first use against the torch in use (kernels/cpu/_torch.py: torch's C++ ABI differs between
 * versions, so one build serves one torch) and loaded only after its SHA-256 matched. It computes nothing
 * itself: the element-wise work is the C library's (dropkit_cpu.h), whose entry points Python hands over in
 * dk_torch_register() after that library was verified and loaded. The results are the bits of the Python
 * registration (kernels/cpu/_wrappers.py over ops/kernels.py), which serves where this file cannot be built;
 * tests/test_native.py compares the two.
 */
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <ATen/Functions.h>
#include <ATen/TensorOperators.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>

#include <sys/types.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#ifndef DK_TORCH_SOURCE_HASH
#define DK_TORCH_SOURCE_HASH "unknown"
#endif

#define DK_TORCH_API extern "C" __attribute__((visibility("default")))

namespace {

using keep_mask_fn = int (*)(uint8_t *, int64_t, uint32_t, uint64_t, uint64_t, uint64_t, int, int);
using dropout_mul_fn = int (*)(int, const void *, void *, int64_t, uint32_t, double, uint64_t, uint64_t, uint64_t,
                               int, int);
using gaussian_mul_fn = int (*)(int, const void *, int64_t, void *, int64_t, double, uint64_t, uint64_t, uint64_t,
                                int, int);

struct State {
    keep_mask_fn keep_mask = nullptr;
    dropout_mul_fn dropout_mul = nullptr;
    gaussian_mul_fn gaussian_mul = nullptr;
    int dtype_code[4] = {-1, -1, -1, -1};  // float32, float64, float16, bfloat16 -> the C library's codes
    int64_t parallel_threshold = 1 << 15;
    std::atomic<int> isa{0};
    std::unique_ptr<torch::Library> library, autograd_library;
    std::optional<c10::OperatorHandle> dropout_op;  // dropout_'s graph node is the out-of-place op's
    std::optional<c10::OperatorHandle> fused_backward_op;
};

State g;

constexpr uint64_t M32 = 0xFFFFFFFFull;

struct Key {
    uint64_t seed, stream;
};

// The key's 4 int64 words, each in [0, 2**32): the same rule and messages as ops/schemas.py's key_ints.
Key key_ints(const at::Tensor &key) {
    TORCH_CHECK_VALUE(key.scalar_type() == at::kLong && key.dim() == 1 && key.size(0) == 4 && key.is_cpu(),
                      "a dropkit key is an int64 tensor of shape (4,) on the CPU (dropkit.rng.key_tensor); received ",
                      key.scalar_type(), " ", key.sizes(), " on ", key.device());
    const at::Tensor k = key.is_contiguous() ? key : key.contiguous();
    const int64_t *w = k.const_data_ptr<int64_t>();
    for (int i = 0; i < 4; ++i) {
        TORCH_CHECK_VALUE(w[i] >= 0 && static_cast<uint64_t>(w[i]) <= M32,
                          "a dropkit key is 4 int64 words in [0, 2**32); received [", w[0], ", ", w[1], ", ", w[2],
                          ", ", w[3], "]");
    }
    return {static_cast<uint64_t>(w[0]) | (static_cast<uint64_t>(w[1]) << 32),
            static_cast<uint64_t>(w[2]) | (static_cast<uint64_t>(w[3]) << 32)};
}

// rng.threshold: floor(p * 65536 + 0.5), at most 65535 below p = 1, 65536 at p = 1.
uint32_t threshold(double p) {
    TORCH_CHECK_VALUE(p >= 0.0 && p <= 1.0,
                      "`p` must be a real number in [0, 1] (the probability of dropping); received p=", p);
    if (p == 1.0) return 65536u;
    const double t = std::floor(p * 65536.0 + 0.5);
    return t > 65535.0 ? 65535u : static_cast<uint32_t>(t);
}

// rng.check_elements for an int64 offset: offset >= 0 (offset + n < 2**64 then holds for any tensor).
void check_offset(int64_t offset, int64_t n) {
    TORCH_CHECK_VALUE(offset >= 0,
                      "the element indices of a call must stay in [0, 2**64): need `offset` >= 0 and `offset` + n <= "
                      "2**64; received offset=",
                      offset, ", n=", n);
}

int threads(int64_t n) { return n < g.parallel_threshold ? 1 : at::get_num_threads(); }

int dtype_code(const at::Tensor &x, const char *op) {
    int i = -1;
    switch (x.scalar_type()) {
        case at::kFloat: i = 0; break;
        case at::kDouble: i = 1; break;
        case at::kHalf: i = 2; break;
        case at::kBFloat16: i = 3; break;
        default: break;
    }
    TORCH_CHECK_TYPE(i >= 0, "dropkit::", op, " takes a floating tensor (float16, bfloat16, float32, float64); received ",
                     x.scalar_type());
    return g.dtype_code[i];
}

void check(int rc, const char *fn) { TORCH_CHECK(rc == 0, fn, " failed with code ", rc); }

const void *read_ptr(const at::Tensor &t, const char *op) {
    const void *p = t.const_data_ptr();  // const: a copy-on-write input stays lazy
    TORCH_CHECK_TYPE(p != nullptr || t.numel() == 0, "dropkit::", op,
                     ": the CPU kernel needs `x` to be a plain tensor with its own memory (data_ptr 0)");
    return p;
}

// kernels.round_to: y to dtype, then the 16-bit NaN rule (reference.NAN_BITS).
at::Tensor round_to(const at::Tensor &y, at::ScalarType dtype) {
    at::Tensor z = y.to(dtype);
    int64_t bits = dtype == at::kHalf ? 0x7E00 : dtype == at::kBFloat16 ? 0x7FC0 : -1;
    if (bits < 0) return z;
    at::Tensor canonical = at::scalar_tensor(bits, at::TensorOptions().dtype(at::kShort));
    return at::where(at::isnan(z), canonical, z.view(at::kShort)).view(dtype);
}

// ops/kernels.py's into_layout: y (values for x's shape) rounded to x's dtype, laid out as torch.empty_like(x).
at::Tensor into_layout(const at::Tensor &x, at::Tensor y) {
    if (y.scalar_type() != x.scalar_type()) y = round_to(y, x.scalar_type());
    if (y.is_contiguous() && x.is_contiguous()) return y;
    at::Tensor like = at::empty_like(x);
    if (y.strides() == like.strides()) return y;
    return like.copy_(y);
}

at::Tensor dropout_mul(const at::Tensor &x, int code, const Key &k, uint32_t thr, double scale, int64_t offset,
                       const at::Tensor *out) {
    const at::Tensor src = x.is_contiguous() ? x : x.contiguous();
    const int64_t n = src.numel();
    check_offset(offset, n);
    at::Tensor dst = out ? *out : at::empty_like(src, at::MemoryFormat::Contiguous);
    if (n) {
        void *o = dst.mutable_data_ptr();  // first: in place, this is what makes a copy-on-write x's memory its own
        check(g.dropout_mul(code, read_ptr(src, "dropout"), o, n, thr, scale, k.seed, k.stream,
                            static_cast<uint64_t>(offset), g.isa.load(std::memory_order_relaxed), threads(n)),
              "dk_dropout_mul");
    }
    return dst;
}

// dropout with a noise_shape: x * (keep ? scale : 0), the mask of noise_shape broadcast (ops/kernels.py mask_factor).
at::Tensor shared_mask_dropout(const at::Tensor &x, const Key &k, uint32_t thr, double scale, at::IntArrayRef shape,
                               int64_t offset) {
    const at::ScalarType cdt = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    at::Tensor keep = at::empty(shape, at::TensorOptions().dtype(at::kBool));
    const int64_t n = keep.numel();
    check_offset(offset, n);
    if (n) {
        check(g.keep_mask(static_cast<uint8_t *>(keep.mutable_data_ptr()), n, thr, k.seed, k.stream,
                          static_cast<uint64_t>(offset), g.isa.load(std::memory_order_relaxed), threads(n)),
              "dk_keep_mask");
    }
    return into_layout(x, x.to(cdt).mul(keep.to(cdt).mul(scale)));
}

at::Tensor dropout(const at::Tensor &x, const at::Tensor &key, double p, double scale,
                   at::OptionalSymIntArrayRef noise_shape, int64_t offset) {
    const int code = dtype_code(x, "dropout");
    const Key k = key_ints(key);
    const uint32_t thr = threshold(p);
    if (noise_shape.has_value()) {
        return shared_mask_dropout(x, k, thr, scale, C10_AS_INTARRAYREF_SLOW(*noise_shape), offset);
    }
    at::Tensor y = dropout_mul(x, code, k, thr, scale, offset, nullptr);
    return x.is_contiguous() ? y : into_layout(x, y);
}

void dropout_(at::Tensor &x, const at::Tensor &key, double p, double scale, at::OptionalSymIntArrayRef noise_shape,
              int64_t offset) {
    const int code = dtype_code(x, "dropout");
    // before anything is written (the version counter would refuse only after the kernel wrote x)
    TORCH_CHECK(!x.is_inference() || c10::InferenceMode::is_enabled(),
                "Inplace update to inference tensor outside InferenceMode is not allowed. You can make a clone to get "
                "a normal tensor before doing inplace update.");
    const Key k = key_ints(key);
    const uint32_t thr = threshold(p);
    if (!noise_shape.has_value() && x.is_contiguous()) {
        dropout_mul(x, code, k, thr, scale, offset, &x);
        // the kernel wrote through the data pointer; no public C++ API bumps a version counter (torch's own
        // torch::autograd::increment_version makes this same call)
        x.unsafeGetTensorImpl()->bump_version();
        return;
    }
    x.copy_(dropout(x, key, p, scale, noise_shape, offset));
}

at::Tensor gaussian_dropout(const at::Tensor &x, const at::Tensor &key, double sigma, int64_t offset) {
    const Key k = key_ints(key);
    const int code = dtype_code(x, "gaussian_dropout");
    const int64_t n = x.numel();
    check_offset(offset, n);
    bool broadcast = n > 1;  // one value broadcast (every stride 0, e.g. the gradient of a sum): read as that value
    for (int64_t d = 0; broadcast && d < x.dim(); ++d) broadcast = x.stride(d) == 0 || x.size(d) == 1;
    const at::Tensor src = broadcast || x.is_contiguous() ? x : x.contiguous();
    at::Tensor dst = at::empty_like(x, at::MemoryFormat::Contiguous);
    if (n) {
        check(g.gaussian_mul(code, read_ptr(src, "gaussian_dropout"), broadcast ? 0 : 1, dst.mutable_data_ptr(), n,
                             sigma, k.seed, k.stream, static_cast<uint64_t>(offset),
                             g.isa.load(std::memory_order_relaxed), threads(n)),
              "dk_gaussian_mul");
    }
    return into_layout(x, dst);
}


// ---------------------------------------------------------------------------------------------------------------
// Autograd: the ops linear in x, y = x * f(key), for every device. Backward is the op on the gradient and the
// tangent is the op on the tangent, with the call's key and arguments (the noise is regenerated from the key,
// nothing per element is saved). What ops/autograd.py's Linear Function does in the Python registration, as the
// kernels torch generates for its own ops do it: a graph node (torch::autograd::Node) and, under forward-mode AD,
// the tangent set on the output. torch::autograd::Function is not used: it refuses forward-mode AD and the
// torch.func transforms, which dropkit's ops support.
// ---------------------------------------------------------------------------------------------------------------
namespace ag = torch::autograd;
using NodePtr = decltype(ag::Edge::function);  // std::shared_ptr<Node> up to torch 2.9, c10::intrusive_ptr<Node> since

template <class N, class... A>
NodePtr make_node(A &&...args) {
    if constexpr (std::is_same_v<NodePtr, std::shared_ptr<ag::Node>>) {
        return std::shared_ptr<N>(new N(std::forward<A>(args)...));
    } else {
        return c10::make_intrusive<N>(std::forward<A>(args)...);
    }
}

// op(*head, *rest) through the whole dispatcher (autograd included: a gradient of a gradient gets its own node).
at::Tensor call_op(const c10::OperatorHandle &op, std::initializer_list<c10::IValue> head,
                   const std::vector<c10::IValue> &rest) {
    torch::jit::Stack stack;
    stack.reserve(head.size() + rest.size());
    stack.insert(stack.end(), head.begin(), head.end());
    stack.insert(stack.end(), rest.begin(), rest.end());
    op.callBoxed(&stack);
    return std::move(stack[0]).toTensor();
}

// Forward-mode AD has no public C++ API: these two methods are what torch's generated Autograd kernels call (level 0,
// which torch.func's jvp also reaches, as it does for torch's own ops). Every use goes through these two helpers.
at::Tensor tangent_of(const at::Tensor &t) { return t.defined() ? t._fw_grad(/*level=*/0) : at::Tensor(); }

void set_tangent(const at::Tensor &out, const at::Tensor &tangent) {
    out._set_fw_grad(tangent, /*level=*/0, /*is_inplace_op=*/false);
}

struct LinearBackward : ag::Node {
    c10::OperatorHandle op;
    std::vector<c10::IValue> rest;  // the key (4 words) and the scalar arguments: nothing per element

    LinearBackward(c10::OperatorHandle op_, std::vector<c10::IValue> rest_)
        : op(std::move(op_)), rest(std::move(rest_)) {}

    ag::variable_list apply(ag::variable_list &&grads) override {
        if (!grads[0].defined()) return {at::Tensor()};
        return {call_op(op, {grads[0]}, rest)};
    }

    std::string name() const override { return op.schema().name() + "Backward"; }

    void release_variables() override {}
};

void redispatch_below_autograd(const c10::OperatorHandle &op, c10::DispatchKeySet ks, torch::jit::Stack *stack) {
    at::AutoDispatchBelowADInplaceOrView guard;
    op.redispatchBoxed(ks & c10::after_ADInplaceOrView_keyset, stack);
}

// The Autograd kernel of an op linear in x (first argument x, one Tensor returned).
void linear_autograd(const c10::OperatorHandle &op, c10::DispatchKeySet ks, torch::jit::Stack *stack) {
    const size_t n = op.schema().arguments().size();
    const at::Tensor x = (*stack)[stack->size() - n].toTensor();
    const bool wants_grad = at::GradMode::is_enabled() && x.requires_grad();
    const at::Tensor tangent = tangent_of(x);
    if (!wants_grad && !tangent.defined()) {
        redispatch_below_autograd(op, ks, stack);
        return;
    }
    std::vector<c10::IValue> rest(stack->end() - static_cast<std::ptrdiff_t>(n - 1), stack->end());
    redispatch_below_autograd(op, ks, stack);
    const at::Tensor out = stack->back().toTensor();
    TORCH_CHECK(!out.is_same(x), op.schema().name(), ": a kernel returned its input; an op linear in x returns a new "
                "tensor (the graph node would be set on the input)");
    if (wants_grad) {
        NodePtr node = make_node<LinearBackward>(op, rest);
        node->set_next_edges(ag::collect_next_edges(x));
        ag::set_history(out, node);
    }
    if (tangent.defined()) set_tangent(out, call_op(op, {tangent}, rest));
}

// The Autograd kernel of dropout_: with a graph node wanted, the out-of-place op (and its node) copied in, and
// copy_ records the in-place write for autograd and forward-mode AD; without one, the device kernel writes x.
void dropout_inplace_autograd(const c10::OperatorHandle &op, c10::DispatchKeySet ks, torch::jit::Stack *stack) {
    const size_t n = op.schema().arguments().size();
    at::Tensor x = (*stack)[stack->size() - n].toTensor();
    if (!(at::GradMode::is_enabled() && x.requires_grad()) && !tangent_of(x).defined()) {
        redispatch_below_autograd(op, ks, stack);
        return;
    }
    std::vector<c10::IValue> rest(stack->end() - static_cast<std::ptrdiff_t>(n - 1), stack->end());
    torch::jit::drop(*stack, n);
    x.copy_(call_op(*g.dropout_op, {x}, rest));
}


// ---------------------------------------------------------------------------------------------------------------
// Autograd of fused_bias_act_dropout_add: y = residual + dropout(act(x + bias)). What ops/autograd.py's Fused
// Function does: backward through fused_bias_act_dropout_add_backward (grad_h), grad_bias = grad_h summed over
// all but the last dimension, grad_residual = grad; tangent = t_residual + backward(t_x + t_bias).
// ---------------------------------------------------------------------------------------------------------------
c10::IValue optional_tensor(const at::Tensor &t) { return t.defined() ? c10::IValue(t) : c10::IValue(); }

at::Tensor fused_backward(const at::Tensor &grad, const at::Tensor &x, const at::Tensor &bias,
                          const std::vector<c10::IValue> &rest) {
    return call_op(*g.fused_backward_op, {grad, x, optional_tensor(bias)}, rest);
}

struct FusedBackward : ag::Node {
    ag::SavedVariable x_, bias_;  // saved as autograd saves inputs: version-checked, through saved-tensor hooks
    bool has_bias;
    std::vector<c10::IValue> rest;  // key, p, scale, activation, offset

    FusedBackward(const at::Tensor &x, const at::Tensor &bias, std::vector<c10::IValue> rest_)
        : x_(x, false), bias_(bias, false), has_bias(bias.defined()), rest(std::move(rest_)) {}

    ag::variable_list apply(ag::variable_list &&grads) override {
        const at::Tensor &grad = grads[0];
        ag::variable_list out(3);
        if (!grad.defined()) return out;
        const bool need_x = should_compute_output(0), need_b = has_bias && should_compute_output(1);
        if (need_x || need_b) {
            const at::Tensor x = x_.unpack();
            const at::Tensor grad_h = fused_backward(grad, x, has_bias ? bias_.unpack() : at::Tensor(), rest);
            if (need_x) out[0] = grad_h;
            if (need_b) out[1] = grad_h.reshape({-1, x.size(-1)}).sum(0);
        }
        if (should_compute_output(2)) out[2] = grad;
        return out;
    }

    std::string name() const override { return "dropkit::fused_bias_act_dropout_addBackward"; }

    void release_variables() override {
        x_.reset_data();
        bias_.reset_data();
    }
};

void fused_autograd(const c10::OperatorHandle &op, c10::DispatchKeySet ks, torch::jit::Stack *stack) {
    const size_t n = op.schema().arguments().size();
    const size_t base = stack->size() - n;
    const at::Tensor x = (*stack)[base].toTensor();
    const c10::IValue &b = (*stack)[base + 1];
    const at::Tensor bias = b.isTensor() ? b.toTensor() : at::Tensor();
    const at::Tensor residual = (*stack)[base + 2].toTensor();
    auto needs_grad = [](const at::Tensor &t) { return t.defined() && t.requires_grad(); };
    const bool wants_grad = at::GradMode::is_enabled() && (needs_grad(x) || needs_grad(bias) || needs_grad(residual));
    const at::Tensor t_x = tangent_of(x), t_bias = tangent_of(bias), t_residual = tangent_of(residual);
    const bool wants_tangent = t_x.defined() || t_bias.defined() || t_residual.defined();
    if (!wants_grad && !wants_tangent) {
        redispatch_below_autograd(op, ks, stack);
        return;
    }
    std::vector<c10::IValue> rest(stack->begin() + static_cast<std::ptrdiff_t>(base + 3), stack->end());
    redispatch_below_autograd(op, ks, stack);
    const at::Tensor out = stack->back().toTensor();
    TORCH_CHECK(!out.is_same(x) && !out.is_same(residual), op.schema().name(), ": a kernel returned its input");
    if (wants_grad) {
        NodePtr node = make_node<FusedBackward>(x, bias, rest);
        node->set_next_edges(ag::collect_next_edges(x, bias, residual));
        ag::set_history(out, node);
    }
    if (wants_tangent) {
        at::Tensor t_h = t_x.defined() ? t_x : at::zeros_like(x);
        if (t_bias.defined()) t_h = t_h + t_bias;
        at::Tensor t;
        {
            c10::AutoFwGradMode primal_only(false);  // x and bias enter as primals: t carries no tangent itself
            t = fused_backward(t_h.expand_as(x).contiguous(), x, bias, rest);
        }
        if (t_residual.defined()) t = t + t_residual;
        set_tangent(out, t);
    }
}

}  // namespace

/* The source hash this library was built from (kernels/cpu/_torch.py checks it before registering). */
DK_TORCH_API const char *dk_torch_source_hash(void) { return DK_TORCH_SOURCE_HASH; }

/* Register the kernels for dispatch key CPU, and the Autograd kernels (every device). fns: the C library's dk_keep_mask, dk_dropout_mul, dk_gaussian_mul;
 * codes: its dtype codes of float32, float64, float16, bfloat16. Returns 0, 1 when already registered, or -1
 * with the reason in err (NUL-terminated, at most errlen bytes). */
DK_TORCH_API int dk_torch_register(const void *const *fns, const int *codes, int isa, int64_t parallel_threshold,
                                   char *err, int64_t errlen) {
    if (g.library) return 1;
    try {
        g.keep_mask = reinterpret_cast<keep_mask_fn>(const_cast<void *>(fns[0]));
        g.dropout_mul = reinterpret_cast<dropout_mul_fn>(const_cast<void *>(fns[1]));
        g.gaussian_mul = reinterpret_cast<gaussian_mul_fn>(const_cast<void *>(fns[2]));
        for (int i = 0; i < 4; ++i) g.dtype_code[i] = codes[i];
        g.parallel_threshold = parallel_threshold;
        g.isa.store(isa);
        auto lib = std::make_unique<torch::Library>(torch::Library::IMPL, "dropkit", c10::DispatchKey::CPU, __FILE__,
                                                    __LINE__);
        lib->impl("dropout", &dropout);
        lib->impl("dropout_", &dropout_);
        lib->impl("gaussian_dropout", &gaussian_dropout);
        auto autograd = std::make_unique<torch::Library>(torch::Library::IMPL, "dropkit", c10::DispatchKey::Autograd,
                                                         __FILE__, __LINE__);
        for (const char *name : {"dropout", "gaussian_dropout", "drop_block", "embedding_dropout"}) {
            autograd->impl(name, torch::CppFunction::makeFromBoxedFunction<&linear_autograd>());
        }
        autograd->impl("dropout_", torch::CppFunction::makeFromBoxedFunction<&dropout_inplace_autograd>());
        autograd->impl("fused_bias_act_dropout_add", torch::CppFunction::makeFromBoxedFunction<&fused_autograd>());
        g.dropout_op = c10::Dispatcher::singleton().findSchemaOrThrow("dropkit::dropout", "");
        g.fused_backward_op =
            c10::Dispatcher::singleton().findSchemaOrThrow("dropkit::fused_bias_act_dropout_add_backward", "");
        g.library = std::move(lib);
        g.autograd_library = std::move(autograd);
        return 0;
    } catch (const std::exception &e) {
        if (err && errlen > 0) {
            std::snprintf(err, static_cast<size_t>(errlen), "%s", e.what());
        }
        return -1;
    }
}

/* The ISA the kernels run (kernels.cpu.set_isa). */
DK_TORCH_API void dk_torch_set_isa(int isa) { g.isa.store(isa); }
