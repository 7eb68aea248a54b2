# README's "Bring a layer over from PyTorch" example, exactly as written there, run with the test
# venv (PyTorch 2.13, safetensors, numpy) and the mha binary built here.
add_test(NAME readme_snippet
  COMMAND ${MHA_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/readme_snippet.py $<TARGET_FILE:mha_cli>)
