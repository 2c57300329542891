// The Python module pyquant._C. Importing it loads the shared library, which runs the static
// TORCH_LIBRARY registrations; its only Python-visible functions report how it was built.
// Plain CPython limited API (no pybind11), so one binary serves every Python >= 3.10.
#include <Python.h>

#include "cpu/isa.h"

#ifndef PYQ_BUILD_TORCH_VERSION
#define PYQ_BUILD_TORCH_VERSION "unknown"
#endif
#ifndef PYQ_CUDA_ARCHS
#define PYQ_CUDA_ARCHS ""
#endif

namespace {

PyObject* cpu_isa(PyObject*, PyObject*) {
  return PyUnicode_FromString(pyquant::cpu::isa_name(pyquant::cpu::current_isa()));
}

PyObject* compiled_cpu_isas(PyObject*, PyObject*) {
#if defined(__x86_64__) || defined(_M_X64)
  return Py_BuildValue("(sss)", "default", "avx2", "avx512");
#else
  return Py_BuildValue("(s)", "default");
#endif
}

PyObject* built_with_cuda(PyObject*, PyObject*) {
#ifdef WITH_CUDA
  Py_RETURN_TRUE;
#else
  Py_RETURN_FALSE;
#endif
}

PyObject* cuda_archs(PyObject*, PyObject*) {
  return PyUnicode_FromString(PYQ_CUDA_ARCHS);
}

PyObject* torch_version(PyObject*, PyObject*) {
  return PyUnicode_FromString(PYQ_BUILD_TORCH_VERSION);
}

PyMethodDef kMethods[] = {
    {"cpu_isa", cpu_isa, METH_NOARGS, "CPU kernel variant used by this process."},
    {"compiled_cpu_isas", compiled_cpu_isas, METH_NOARGS, "CPU kernel variants compiled in."},
    {"built_with_cuda", built_with_cuda, METH_NOARGS, "Whether CUDA kernels are compiled in."},
    {"cuda_archs", cuda_archs, METH_NOARGS, "TORCH_CUDA_ARCH_LIST used for the CUDA kernels."},
    {"torch_version", torch_version, METH_NOARGS, "torch version the extension was built against."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef kModule = {PyModuleDef_HEAD_INIT, "_C", "pyquant C++/CUDA kernels", -1, kMethods};

}  // namespace

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  return PyModule_Create(&kModule);
}
