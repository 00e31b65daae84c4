# Test lab targets (included by the main Makefile). Root only; needs: apt-get install -y debootstrap systemd-container
#   make lab-up [HOSTS=3] [ZONE_HOSTS=0]   boot the lab, write .lab/inventory.yml, .lab/hosts.json, .lab/ssh_config
#   make lab-status                         show hosts, PIDs, addresses
#   make lab-down                           stop everything the lab started
#   make lab-test                           tests of the lab itself (boots and tears down its own lab)
#   make lab-bench                          boot 10 hosts, measure, write bench/results/lab.md
LAB_MK_DIR := $(dir $(lastword $(MAKEFILE_LIST)))
PYTHON ?= python3
HOSTS ?= 3
ZONE_HOSTS ?= 0
LABCTL := $(PYTHON) $(LAB_MK_DIR)labctl.py

.PHONY: lab-up lab-down lab-status lab-test lab-bench

lab-up:
	$(LABCTL) up --hosts $(HOSTS) --zone-hosts $(ZONE_HOSTS)

lab-down:
	$(LABCTL) down

lab-status:
	$(LABCTL) status

lab-test:
	$(PYTHON) -m pytest $(LAB_MK_DIR) -q -rs

lab-bench:
	$(PYTHON) $(LAB_MK_DIR)../../bench/lab_bench.py
