/* main.c - the mha command-line tool (placeholder until the CLI lands). */
#include "mha.h"
#include <stdio.h>
int main(void) { printf("mha %s\n", MHA_VERSION_STRING); return 0; }
