"""One real line per preset (loghub), shared by the parser and service fuzz tests."""

#: Lines that fit each preset's format: headers to vary, near-misses to build.
EXAMPLES = {
    "generic": "2024-01-01 10:00:00 INFO auth: user alice logged in",
    "hdfs": "081109 203615 148 INFO dfs.DataNode$PacketResponder: PacketResponder 1 for block "
    "blk_38865049064139660 terminating",
    "hadoop": "2015-10-18 18:01:47,978 INFO [main] org.apache.hadoop.X: Created MRAppMaster",
    "spark": "17/06/09 20:10:40 INFO executor.CoarseGrainedExecutorBackend: Registered signal",
    "openssh": "Dec 10 06:55:46 LabSZ sshd[24200]: reverse mapping checking getaddrinfo",
    "zookeeper": "2015-07-29 17:41:44,747 - INFO  [QuorumPeer[myid=1]/0:0:0:0:0:0:0:0:2181:"
    "FastLeaderElection@774] - Notification time out: 3200",
    "linux": "Jun 14 15:16:01 combo sshd(pam_unix)[19939]: authentication failure;",
    "openstack": "nova-api.log.1.2017-05-16_13:53:08 2017-05-16 00:00:00.008 25746 INFO "
    "nova.osapi_compute.wsgi.server [req-38101a0b-2096-447d-96ea-a692162415ae] 10.11.10.1",
    "apache": "[Sun Dec 04 04:47:44 2005] [notice] workerEnv.init() ok /etc/httpd/conf/x",
    "hpc": "134681 node-246 unix.hw state_change.unavailable 1077804742 1 Component State",
}
