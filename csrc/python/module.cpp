// An empty Python module so that `import gumbel_ext._C` loads the op library, whose
// TORCH_LIBRARY blocks register the ops with the dispatcher (AOT builds only; the JIT
// and CMake builds load the library directly).
#include <Python.h>

static struct PyModuleDef gumbel_ext_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&gumbel_ext_module); }
