# bg_fdw/Makefile

MODULE_big = bg_fdw
OBJS = bg_fdw.o control.o dest.o handshake.o job.o keep.o launcher.o messages.o registry.o shape.o spill.o spool.o worker.o pool.o queue.o ring.o supervisor.o waitgraph.o

EXTENSION = bg_fdw
DATA = bg_fdw--1.0.sql bg_fdw--1.0--1.1.sql
PGFILEDESC = "bg_fdw - run SQL in background workers, read results as foreign tables"

REGRESS = setup basic shapes errors xact registry keep control
REGRESS_OPTS = --temp-config=$(srcdir)/regress.conf

TAP_TESTS = 1

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# every file shares the job segment's layout
$(OBJS): bg_fdw.h compat.h
