/* safetensors.c: being written */
