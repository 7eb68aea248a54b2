# py_numpy.cmake - the Python package's NumPy side, files and pictures (pytest, test venv):
# test_py_numpy.py  mha.attention / attention_backward against a float64 NumPy reference,
#                   without PyTorch importable; set_num_threads / get_num_threads;
# test_py_files.py  save_file / load_file / load_metadata / export, against the safetensors
#                   package and the mha CLI;
# test_py_viz.py    mha.viz: heatmap, save (SVG, PNG, HTML), show.
if(TARGET mha_shared AND TARGET mha_cli)
  foreach(t test_py_numpy test_py_files test_py_viz)
    mha_add_pytest(${t})
  endforeach()
endif()
