/* mpi_internal.h - what the MPI calls (src/mpi/*.c, include/mha_mpi.h) share. Never installed. */
#ifndef MHA_MPI_INTERNAL_H
#define MHA_MPI_INTERNAL_H

#include "mha_mpi.h"
#include "core/internal.h"

#endif
